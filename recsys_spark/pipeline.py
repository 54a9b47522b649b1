"""The end-to-end pipeline: every stage in order, each skipped when up to date.

A stage reruns when its config sections or its inputs' fingerprints changed
(see :mod:`recsys_spark.stages`); a rerun stage gives its output a new id, so
the stages downstream of it rerun too, and nothing else does.
"""

from __future__ import annotations

import logging
from typing import Any

from pyspark.sql import SparkSession

from recsys_spark import registry, stages
from recsys_spark.config import Config

log = logging.getLogger(__name__)


def pipeline_stages(cfg: Config) -> list[str]:
    names = ["ingest", "split", *[f"predict:{m}" for m in cfg.models.names], "blend", "evaluate"]
    if cfg.neighbors.model in cfg.models.names:  # export the table of the kNN model the pipeline fits
        names.insert(2, "neighbors")
    if cfg.factorize.model in cfg.models.names:  # export the factors (and their meaning) of the factor model it fits
        names.insert(2, "factorize")
    if cfg.content.model in cfg.models.names:  # export the features, profiles and explanations of the content model it fits
        names.insert(2, "content")
    if any(registry.is_deep(m) for m in cfg.models.names):  # the Parquet hand-off to PyTorch jobs
        names.insert(2, "export_features")
    if cfg.dataset.kind == "generated":
        names.insert(0, "generate")
    return names


def run_named_stage(spark: SparkSession, cfg: Config, name: str, force: bool = False) -> dict[str, Any]:
    if name.startswith("predict:"):
        return stages.run_model(spark, cfg, name.split(":", 1)[1], force=force)
    return stages.STAGES[name](spark, cfg, force=force)


def run_pipeline(spark: SparkSession, cfg: Config, force: bool = False) -> dict[str, Any]:
    """Run the stages; return each stage's manifest (with ``skipped``)."""
    results: dict[str, Any] = {}
    names = pipeline_stages(cfg)
    for i, name in enumerate(names, 1):
        log.info("pipeline [%d/%d] %s", i, len(names), name)
        results[name] = run_named_stage(spark, cfg, name, force=force)
    ran = [n for n, m in results.items() if not m["skipped"]]
    log.info("pipeline finished: ran %s, skipped %s", ran or "nothing", [n for n in names if n not in ran] or "nothing")
    return results
