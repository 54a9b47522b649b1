"""generate: the synthetic MovieLens-shaped dataset as raw CSV files (ml-latest layout + users.csv)."""

from __future__ import annotations

import logging
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import SparkSession

from recsys_spark import generate as gen
from recsys_spark.config import Config
from recsys_spark.stages import layout
from recsys_spark.stages.manifest import run_stage
from recsys_spark.stages.stage import Stage, nothing

log = logging.getLogger(__name__)


def run_generate(spark: SparkSession, cfg: Config, force: bool = False) -> dict[str, Any]:
    """Write the synthetic dataset as raw CSV files (ml-latest layout + users.csv)."""

    def body(tmp: str) -> dict[str, Any]:
        tables = gen.generate(spark, cfg.generate)
        counts = {}
        cached = []
        for name, df in tables.items():  # ratings first: tags are drawn from the cached ratings
            df = df.persist(StorageLevel.MEMORY_AND_DISK)
            cached.append(df)
            n_files = max(1, cfg.generate.n_ratings // 2_000_000) if name == "ratings" else 1
            # RFC 4180 quoting (a quote inside a field is doubled), as the ml-latest reader expects
            df.coalesce(n_files).write.option("header", True).option("quote", '"').option("escape", '"').csv(
                f"{tmp}/{name}.csv"
            )
            counts[name] = df.count()
        for df in cached:
            df.unpersist()
        log.info("generated %s", counts)
        return counts

    return run_stage(spark, cfg, "generate", layout.raw(cfg), STAGE.sections, [], body, force)


STAGE = Stage(
    name="generate", run=run_generate, help="generate the synthetic MovieLens-shaped dataset as raw CSV",
    sections=("generate",), inputs=nothing, outputs=lambda cfg, _m=None: [layout.raw(cfg)],
    instances=lambda cfg: [None] if cfg.dataset.kind == "generated" else [],
)  # fmt: skip
