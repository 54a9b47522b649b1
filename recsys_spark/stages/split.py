"""split: persist train/valid/test (and sampled negatives) for the configured protocol."""

from __future__ import annotations

import logging
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import ingest as ing
from recsys_spark import split as spl
from recsys_spark.config import Config
from recsys_spark.io.datasets import dataset_spec, parse_file
from recsys_spark.schemas import (
    COL_ITEM,
    COL_ITEM_ID,
    COL_USER,
    COL_USER_ID,
    ITEM_MAP,
    NEGATIVES,
    RATINGS,
    USER_MAP,
)
from recsys_spark.stages import layout
from recsys_spark.stages.manifest import run_stage, write
from recsys_spark.stages.stage import Stage, once

log = logging.getLogger(__name__)


def _inputs(cfg: Config, _model: str | None = None) -> list[str]:
    """The ingested tables and, for the canonical folds, the fold files themselves."""
    extra: list[str] = []
    if cfg.split.protocol == "ml100k_folds":
        spec = dataset_spec(cfg)
        if not spec.folds:
            raise ValueError(f"split.protocol = 'ml100k_folds' needs dataset.kind = 'ml-100k', not {cfg.dataset.kind!r}")
        extra = [f.path for k in cfg.split.folds for f in spec.folds[k]]
    return [layout.ingested(cfg), *extra]


def run_split(spark: SparkSession, cfg: Config, force: bool = False) -> dict[str, Any]:
    """Persist train/valid/test (and sampled negatives) for the configured protocol."""
    ingest_out = layout.ingested(cfg)
    s = cfg.split
    inputs = _inputs(cfg)

    def body(tmp: str) -> dict[str, Any]:
        ratings = spark.read.parquet(f"{ingest_out}/{RATINGS}")
        if s.protocol == "ml100k_folds":
            return _write_folds(spark, cfg, ratings, tmp)
        assigned = spl.split_ratings(ratings, s.protocol, s.ratio, s.seed, s.valid_ratio)
        assigned = assigned.persist(StorageLevel.MEMORY_AND_DISK)
        counts = _write_parts(assigned, tmp)
        counts["input"] = ratings.count()
        _check_split_counts(counts)
        if s.n_negatives:
            n_items = spark.read.parquet(f"{ingest_out}/{ITEM_MAP}").count()
            test = spark.read.parquet(f"{tmp}/{spl.TEST}")
            neg, short = spl.sample_negatives(test, ratings, n_items, s.n_negatives, s.seed)
            write(neg, f"{tmp}/{NEGATIVES}")
            counts["negatives"] = spark.read.parquet(f"{tmp}/{NEGATIVES}").count()
            counts["negatives_short_rows"] = short
        assigned.unpersist()
        return counts

    return run_stage(spark, cfg, "split", layout.split(cfg), STAGE.sections, inputs, body, force)


def _write_parts(assigned: DataFrame, tmp: str, prefix: str = "") -> dict[str, int]:
    counts = {
        r[spl.COL_PART]: r["count"] for r in assigned.groupBy(spl.COL_PART).count().collect()
    }  # at most three rows
    for name, df in spl.parts(assigned).items():
        write(df, f"{tmp}/{prefix}{name}")
    return {p: counts.get(p, 0) for p in (spl.TRAIN, spl.VALID, spl.TEST)}


def _check_split_counts(counts: dict[str, int]) -> None:
    total = counts[spl.TRAIN] + counts[spl.VALID] + counts[spl.TEST]
    if total != counts["input"]:
        raise RuntimeError(f"split accounting broken: {counts['input']} rows in, {total} rows out ({counts})")


def _write_folds(spark: SparkSession, cfg: Config, ratings: DataFrame, tmp: str) -> dict[str, Any]:
    """The canonical ML-100K folds, mapped to the ingested indices.

    A fold row that fails validation or whose user or item ingest quarantined
    (absent from the side tables) is left out *and counted* per fold
    (``<part>_dropped``); the manifest keeps ``read = kept + dropped``.
    """
    spec = dataset_spec(cfg)
    umap = spark.read.parquet(layout.ingested(cfg, USER_MAP))
    imap = spark.read.parquet(layout.ingested(cfg, ITEM_MAP))
    counts: dict[str, Any] = {}
    for k in cfg.split.folds:
        fold_counts = {}
        for part, fspec in zip((spl.TRAIN, spl.TEST), spec.folds[k], strict=True):
            parsed, n_read = parse_file(spark, fspec, "ratings")
            events = ing.validate_events(parsed, True, (spec.rating_min, spec.rating_max))
            mapped = (
                events.where(F.col("reason").isNull())
                .join(umap, COL_USER_ID, "left")
                .join(imap, COL_ITEM_ID, "left")
            )
            ok = mapped.where(F.col(COL_USER).isNotNull() & F.col(COL_ITEM).isNotNull())
            path = f"{tmp}/u{k}/{part}"
            write(ok.select(*[F.col(c).cast(ratings.schema[c].dataType) for c in ratings.columns]), path)
            kept = spark.read.parquet(path).count()
            fold_counts[part] = kept
            fold_counts[f"{part}_read"] = n_read
            fold_counts[f"{part}_dropped"] = n_read - kept
            if n_read - kept > 0:
                log.warning("fold u%d %s: %d rows refer to quarantined users/items", k, part, n_read - kept)
        counts[f"u{k}"] = fold_counts
    return counts


STAGE = Stage(
    name="split", run=run_split, help="write train/valid/test (and sampled negatives) for the configured protocol",
    sections=("split",), inputs=_inputs, outputs=lambda cfg, _m=None: [layout.split(cfg)], instances=once,
)  # fmt: skip
