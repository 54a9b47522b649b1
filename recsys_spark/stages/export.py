"""export_features: the Parquet feature tables a PyTorch job trains on."""

from __future__ import annotations

import logging
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from recsys_spark import features as fe
from recsys_spark import registry
from recsys_spark import split as spl
from recsys_spark.config import Config
from recsys_spark.io import fs
from recsys_spark.schemas import ITEM_MAP, NEGATIVES, USER_MAP
from recsys_spark.stages import layout
from recsys_spark.stages.manifest import run_stage
from recsys_spark.stages.stage import Stage

log = logging.getLogger(__name__)


def run_export(spark: SparkSession, cfg: Config, force: bool = False) -> dict[str, Any]:
    """Write the feature tables a PyTorch job trains on (:mod:`recsys_spark.features`).

    Output under ``<output>/<dataset>/features/<split>``: ``interactions/{train,
    valid,test}``, ``negatives`` (for the training positives), ``items``,
    ``users``, ``histories`` (training part, chronological) and
    ``metadata.json`` (vocabulary sizes, the split they came from, schemas).
    Row groups are ``export.row_group_mb`` MB, each table in ``export.files``
    files.  Accounting: rows in = rows out per part; negatives asked and drawn.
    """
    split_out = layout.split(cfg)
    output = layout.features(cfg)
    ingest_out = layout.ingested(cfg)
    content_vectors = f"{layout.content(cfg, cfg.export.content_model)}/features/vectors"
    e = cfg.export

    def body(tmp: str) -> dict[str, Any]:
        def write(df: DataFrame, name: str) -> int:
            df.repartition(e.files).write.option("parquet.block.size", e.row_group_mb * 1024 * 1024).parquet(f"{tmp}/{name}")
            return spark.read.parquet(f"{tmp}/{name}").count()

        counts: dict[str, Any] = {}
        parts = {p: layout.read_split(spark, cfg, p) for p in (spl.TRAIN, spl.VALID, spl.TEST)}
        for p, df in parts.items():
            n_in = df.count()
            n_out = write(fe.interactions(df), f"interactions/{p}")
            if n_in != n_out:
                raise RuntimeError(f"export: {n_in} {p} ratings in, {n_out} written")
            counts[f"interactions_{p}"] = n_out
        train = parts[spl.TRAIN]
        n_users = spark.read.parquet(f"{ingest_out}/{USER_MAP}").count()
        n_items = spark.read.parquet(f"{ingest_out}/{ITEM_MAP}").count()
        neg = fe.sample_negatives(train, n_items, e.negatives, e.seed)
        counts["negatives"] = write(neg, NEGATIVES)
        counts["negatives_short"] = fe.negatives_shortfall(train, spark.read.parquet(f"{tmp}/{NEGATIVES}"), n_items, e.negatives)
        items = layout.read_ingested(spark, cfg, "items")
        genres = fe.genre_vocabulary(items)
        vectors = spark.read.parquet(content_vectors) if fs.exists(spark, content_vectors) else None
        counts["items"] = write(fe.item_features(items, genres, vectors, e.top_terms), "items")
        users_path = f"{ingest_out}/users"
        users = spark.read.parquet(users_path) if fs.exists(spark, users_path) else None
        user_table, occupations = fe.user_features(users, parts[spl.TRAIN].unionByName(parts[spl.VALID]).unionByName(parts[spl.TEST]))
        counts["users"] = write(user_table, "users")
        counts["histories"] = write(fe.histories(train), "histories")
        n_terms = spark.read.parquet(content_vectors.rsplit("/", 1)[0] + "/vocabulary").count() if vectors is not None else 0
        meta = fe.metadata(
            n_users, n_items, genres, occupations, n_terms, layout.split_name(cfg), negatives_per_positive=e.negatives,
            row_group_mb=e.row_group_mb, terms_from=content_vectors if vectors is not None else None, counts=counts,
        )  # fmt: skip
        fs.write_json(spark, f"{tmp}/metadata.json", meta)
        log.info("export: %s", counts)
        return counts

    inputs = [split_out, ingest_out] + ([content_vectors.rsplit("/features", 1)[0]] if fs.exists(spark, content_vectors) else [])
    return run_stage(spark, cfg, "export_features", output, STAGE.sections, inputs, body, force)


def _inputs(cfg: Config, _model: str | None = None) -> list[str]:
    """The split, the ingested tables and, when the pipeline fits it, the content model whose terms it adds."""
    extra = [layout.content(cfg, cfg.export.content_model)] if cfg.export.content_model in cfg.models.names else []
    return [layout.split(cfg), layout.ingested(cfg), *extra]


STAGE = Stage(
    name="export_features", run=run_export,
    help="write the Parquet feature tables PyTorch jobs train on (interactions, negatives, item/user features, histories)",
    sections=("export",), inputs=_inputs, outputs=lambda cfg, _m=None: [layout.features(cfg)],
    instances=lambda cfg: [None] if any(registry.is_deep(m) for m in cfg.models.names) else [],
)  # fmt: skip
