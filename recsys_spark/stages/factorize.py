"""factorize: a factorization model fitted on train + valid; its factors and what each factor means."""

from __future__ import annotations

import logging
import tempfile
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import SparkSession

from recsys_spark import registry
from recsys_spark.config import Config
from recsys_spark.factorization.interpret import factor_terms, plot_factors
from recsys_spark.factorization.model import FactorModel
from recsys_spark.io import fs
from recsys_spark.schemas import COL_ITEM, COL_USER
from recsys_spark.stages import layout
from recsys_spark.stages.manifest import run_stage, write
from recsys_spark.stages.stage import Stage

log = logging.getLogger(__name__)


def run_factorize(spark: SparkSession, cfg: Config, name: str | None = None, force: bool = False) -> dict[str, Any]:
    """Fit ``factorize.model`` on train + valid; write its factors and what each factor means.

    Output: ``user_factors`` / ``item_factors`` (Parquet, the
    :class:`~recsys_spark.factorization.model.FactorModel` tables),
    ``interpretation`` (per factor: top titles by loading, genres and tags by
    lift) and ``interpretation.png``.  Accounting: ratings in, users and items
    with factors (every user and item of the ratings; none dropped).
    """
    name = name or cfg.factorize.model
    layout.check_model(name, "factorize.model")
    split_out = layout.split(cfg)
    output = layout.factors(cfg, name)
    models_dir = layout.models_dir_of(cfg)
    params = registry.model_params(name, models_dir)

    def body(tmp: str) -> dict[str, Any]:
        ratings = layout.read_train_valid(spark, cfg).persist(StorageLevel.MEMORY_AND_DISK)
        model = registry.build(name, layout.rating_scale(spark, cfg), params, models_dir).fit(ratings)
        if not isinstance(model, FactorModel):
            raise ValueError(f"factorize.model: {name!r} is not a factorization model")
        write(model.user_factors, f"{tmp}/user_factors")
        write(model.item_factors, f"{tmp}/item_factors")
        side = layout.side_data(spark, cfg)
        items, tags = side.items, side.tags
        table = factor_terms(spark.read.parquet(f"{tmp}/item_factors"), items, tags, top=cfg.factorize.top_terms)
        write(table, f"{tmp}/interpretation")
        with tempfile.TemporaryDirectory() as local:
            png = plot_factors(
                spark.read.parquet(f"{tmp}/interpretation"), f"{local}/interpretation.png", f"{name} factors ({cfg.dataset_name})"
            )
            fs.copy_from_local(spark, png, f"{tmp}/interpretation.png")
        counts = {
            "ratings": ratings.count(),
            "users": ratings.select(COL_USER).distinct().count(),
            "items": ratings.select(COL_ITEM).distinct().count(),
            "users_with_factors": spark.read.parquet(f"{tmp}/user_factors").count(),
            "items_with_factors": spark.read.parquet(f"{tmp}/item_factors").count(),
            "rank": model.rank,
            "interpretation_rows": spark.read.parquet(f"{tmp}/interpretation").count(),
        }
        if counts["users_with_factors"] != counts["users"] or counts["items_with_factors"] != counts["items"]:
            raise RuntimeError(
                f"factorize {name}: factors for {counts['users_with_factors']}/{counts['users']} users, "
                f"{counts['items_with_factors']}/{counts['items']} items"
            )
        log.info("factorize %s: rank %d factors for %d users and %d items", name, counts["rank"], counts["users"], counts["items"])
        ratings.unpersist()
        return counts

    extra = {"model": name, "params": params}
    return run_stage(spark, cfg, "factorize", output, STAGE.sections, [split_out], body, force, extra)


STAGE = Stage(
    name="factorize", run=run_factorize,
    help="fit a factorization model on the pipeline's split; write its factors (and NMF factor interpretation)",
    sections=("factorize",), inputs=lambda cfg, _m=None: [layout.split(cfg)],
    outputs=lambda cfg, m=None: [layout.factors(cfg, m or cfg.factorize.model)],
    instances=lambda cfg: [cfg.factorize.model] if cfg.factorize.model in cfg.models.names else [],
    model_key="factorize.model",
)  # fmt: skip
