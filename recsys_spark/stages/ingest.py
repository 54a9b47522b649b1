"""ingest: raw files -> validated Parquet tables, id maps, quarantine and row accounting."""

from __future__ import annotations

import logging
from typing import Any

from pyspark.sql import SparkSession

from recsys_spark import ingest as ing
from recsys_spark.config import Config
from recsys_spark.io import fs
from recsys_spark.io.datasets import dataset_spec, read_dataset
from recsys_spark.schemas import ITEM_MAP, QUARANTINE, USER_MAP
from recsys_spark.stages import layout
from recsys_spark.stages.manifest import run_stage, write
from recsys_spark.stages.stage import Stage, once

log = logging.getLogger(__name__)


def _inputs(cfg: Config, _model: str | None = None) -> list[str]:
    return [f.path for f in dataset_spec(cfg).files.values()]


def run_ingest(spark: SparkSession, cfg: Config, force: bool = False) -> dict[str, Any]:
    """Raw files -> validated Parquet tables, id maps, quarantine and row accounting."""
    spec = dataset_spec(cfg)
    output = layout.ingested(cfg)

    def body(tmp: str) -> dict[str, Any]:
        parsed = read_dataset(spark, spec)
        result = ing.ingest_tables(parsed, (spec.rating_min, spec.rating_max), spec.numeric_ids, spec.decimal)
        rejected = f"{output}.rejected/{QUARANTINE}"
        try:
            ing.check_accounting(result.counts, cfg.ingest.max_quarantine_fraction, rejected, spec.hints)
        except ing.IngestError:
            fs.delete(spark, rejected)
            write(result.quarantine, rejected, 1)
            _log_first_rejected(spark.read.parquet(rejected))
            raise
        fs.delete(spark, f"{output}.rejected")  # a stale rejection of an earlier run
        for name, df in result.tables.items():
            write(df, f"{tmp}/{name}")
        write(result.quarantine, f"{tmp}/{QUARANTINE}", 1)
        return {
            "tables": result.counts,
            "users": spark.read.parquet(f"{tmp}/{USER_MAP}").count(),
            "items": spark.read.parquet(f"{tmp}/{ITEM_MAP}").count(),
            "ratings": result.counts["ratings"][ing.KEPT],
            "rating_scale": [spec.rating_min, spec.rating_max],
        }

    return run_stage(spark, cfg, "ingest", output, STAGE.sections, _inputs(cfg), body, force)


def _log_first_rejected(quarantine: Any, n: int = 5) -> None:
    """The first rejected rows as ``file:line reason``, so that the log alone shows what went wrong."""
    first = quarantine.orderBy("source_file", "line_no").limit(n).collect()  # n rows
    for r in first:
        log.error("  rejected %s:%s %s", r["source_file"], r["line_no"] if r["line_no"] is not None else "-", r["reason"])


STAGE = Stage(
    name="ingest", run=run_ingest, help="validate raw files into Parquet tables, id maps and a quarantine table",
    sections=("dataset", "ingest"), inputs=_inputs, outputs=lambda cfg, _m=None: [layout.ingested(cfg)], instances=once,
)  # fmt: skip
