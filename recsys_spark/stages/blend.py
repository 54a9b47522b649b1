"""blend: for now, the single model that is best on the validation part, relabelled ``blend``."""

from __future__ import annotations

import logging
from typing import Any

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from recsys_spark import evaluate as ev
from recsys_spark import split as spl
from recsys_spark.config import Config
from recsys_spark.schemas import COL_MODEL
from recsys_spark.stages import layout
from recsys_spark.stages.evaluate import score_predictions
from recsys_spark.stages.manifest import run_stage
from recsys_spark.stages.stage import Stage, once

log = logging.getLogger(__name__)


def run_blend(spark: SparkSession, cfg: Config, force: bool = False) -> dict[str, Any]:
    """For now: the single model that is best on the validation part, relabelled ``blend``."""
    names = cfg.models.names
    output = layout.blend(cfg)
    metric = cfg.evaluate.select_metric

    def body(tmp: str) -> dict[str, Any]:
        valid = layout.read_split(spark, cfg, spl.VALID)
        train = layout.read_split(spark, cfg, spl.TRAIN)
        items = layout.read_ingested(spark, cfg, "items")
        n_catalog = items.count()
        scores: dict[str, float] = {}
        if valid.limit(1).count() == 0:
            chosen = names[0]
            log.warning("no validation rows (split.valid_ratio = 0): the blend takes the first model, %s", chosen)
        else:
            for name in names:
                rep = score_predictions(spark, cfg, name, "valid", valid, train, items, n_catalog)
                if metric not in rep:
                    raise ValueError(f"evaluate.select_metric = {metric!r} is not one of {sorted(k for k in rep if k != 'sources')}")
                scores[name] = rep[metric]
            chosen = names[0]
            for name in names[1:]:
                if ev.better(metric, scores[name], scores[chosen]):
                    chosen = name
            log.info("blend: %s is best on validation by %s (%s)", chosen, metric, {k: round(v, 4) for k, v in scores.items()})
        for kind in ("ratings", "topn"):
            df = layout.read_predictions(spark, cfg, chosen, "test", kind).withColumn(COL_MODEL, F.lit("blend"))
            df.write.parquet(f"{tmp}/test/{kind}")
        return {"chosen": chosen, "select_metric": metric, "valid_scores": scores}

    inputs = [layout.predictions(cfg, n) for n in names]
    return run_stage(spark, cfg, "blend", output, STAGE.sections, inputs, body, force, {"models": names})


STAGE = Stage(
    name="blend", run=run_blend,
    help="choose the model that is best on the validation part; write its test predictions as the blend",
    sections=("evaluate",), inputs=lambda cfg, _m=None: [layout.predictions(cfg, n) for n in cfg.models.names],
    outputs=lambda cfg, _m=None: [layout.blend(cfg)], instances=once,
)  # fmt: skip
