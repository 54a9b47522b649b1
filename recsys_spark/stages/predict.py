"""predict: fit one model and write its predictions in the contract shapes, on valid and on test."""

from __future__ import annotations

import logging
from typing import Any

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from recsys_spark import registry
from recsys_spark import split as spl
from recsys_spark.config import Config
from recsys_spark.costs import MB, CostMeter, dir_bytes, throughput
from recsys_spark.recommender import materialize, release
from recsys_spark.schemas import COL_ITEM, COL_RANK, COL_TIMESTAMP, COL_USER
from recsys_spark.stages import layout
from recsys_spark.stages.manifest import run_stage
from recsys_spark.stages.stage import Stage

log = logging.getLogger(__name__)

MODEL = "model"  # the saved fit beside the predictions (models.save)


def run_predict(spark: SparkSession, cfg: Config, name: str, force: bool = False) -> dict[str, Any]:
    """Fit ``name`` and write its predictions in the contract shapes.

    ``valid/``: fitted on train, rating predictions for every valid row and
    top-N for every valid user (the blend selects on these).  ``test/``: refitted
    on train + valid (``models.refit_for_test``, the default; else the same fit
    on train), rating predictions for every test row and top-N for every test
    user, unseen items only (unrated in train + valid either way).  Row accounting: rows asked = rows predicted.
    ``model/`` (``models.save``): the fit that predicted test, saved.  The manifest's ``cost``:
    that fit's seconds to fit, predict and recommend, throughput, peak memory
    (:class:`~recsys_spark.costs.CostMeter`) and the saved model's size.
    """
    layout.check_model(name, "models.names")
    models_dir = layout.models_dir_of(cfg)
    params = registry.model_params(name, models_dir)
    k = cfg.models.k

    def body(tmp: str) -> dict[str, Any]:
        scale = layout.rating_scale(spark, cfg)
        train = layout.read_split(spark, cfg, spl.TRAIN)
        valid = layout.read_split(spark, cfg, spl.VALID)
        test = layout.read_split(spark, cfg, spl.TEST)
        side = layout.side_data(spark, cfg) if registry.uses_side(name) else None  # an argument of fit
        refit = cfg.models.refit_for_test
        counts: dict[str, Any] = {"test_fit": "train + valid" if refit else "train (the fit that predicted valid)"}
        model = None
        cost: dict[str, Any] = {}
        for part, fit_on, target in (("valid", train, valid), ("test", train.unionByName(valid) if refit else train, test)):
            n_rows = target.count()
            if n_rows == 0:
                counts[part] = {"rows": 0, "predicted": 0, "users": 0, "users_with_lists": 0}
                continue
            with CostMeter(spark) as meter:  # the test part's costs are the served fit's: fit, predict, recommend
                if model is None or refit:
                    with meter.phase("fit"):  # its tables cached: the predictions and the lists do not refit
                        fitted = materialize(registry.build(name, scale, params, models_dir).fit_with(fit_on, side))
                    if model is not None:
                        release(model)
                    model = fitted
                pair_cols = [c for c in (COL_USER, COL_ITEM, COL_TIMESTAMP) if c in target.columns]  # time-aware models use the timestamp
                with meter.phase("predict"):
                    model.predict(target.select(*pair_cols)).write.parquet(f"{tmp}/{part}/ratings")
                users = target.select(COL_USER).distinct().persist()
                n_users = users.count()
                with meter.phase("recommend"):
                    if part == "test" and not refit:  # the model never saw valid: keep the user's valid items off the list
                        top = _without(model, users, valid, k)
                    else:
                        top = model.recommend(users, k)
                    top.write.parquet(f"{tmp}/{part}/topn")
            res = meter.result()
            if "fit_s" not in res:  # the test part reuses the valid part's fit: its time and peaks count
                res["fit_s"] = cost.get("fit_s")
                res.update({key: max(v, res.get(key, 0.0)) for key, v in cost.items() if key.startswith("peak_")})
            cost = res
            predicted = spark.read.parquet(f"{tmp}/{part}/ratings").count()
            if predicted != n_rows:
                raise RuntimeError(f"{name}: {n_rows} {part} rows asked, {predicted} predicted")
            topn = spark.read.parquet(f"{tmp}/{part}/topn")
            counts[part] = {
                "rows": n_rows, "predicted": predicted, "users": n_users,
                "users_with_lists": topn.select(COL_USER).distinct().count(),
            }  # fmt: skip
            cost.update(throughput(cost, n_rows, n_users))
            users.unpersist()
            log.info("%s %s: %d rows predicted, top-%d for %d users", name, part, predicted, k, counts[part]["users_with_lists"])
        if model is not None:
            if cfg.models.save:  # the fit that predicted test, reloadable with RecommenderModel.load: its size is a cost
                model.save(f"{tmp}/{MODEL}")
                cost["model_mb"] = round(dir_bytes(spark, f"{tmp}/{MODEL}") / MB, 3)
            release(model)
            counts["cost"] = cost
            log.info(
                "%s: fit %.1fs, predict %s rows/s, recommend %s users/s, peak driver python %s MB, JVM heap %s MB, workers %s MB",
                name, cost.get("fit_s") or 0.0, cost.get("predict_rows_per_s"), cost.get("recommend_users_per_s"),
                cost.get("peak_driver_python_mb"), cost.get("peak_jvm_heap_mb"), cost.get("peak_python_workers_mb"),
            )  # fmt: skip
        history = (getattr(model, "info", None) or {}).get("history") if model is not None else None
        if history and isinstance(history, list) and isinstance(history[0], dict):  # per-epoch losses: the report's learning curves
            counts["history"] = [{key: v for key, v in row.items() if isinstance(v, (int, float)) and v == v} for row in history[:500]]
        return counts

    extra = {"model": name, "params": params, "k": k, "refit_for_test": cfg.models.refit_for_test}
    return run_stage(spark, cfg, f"predict:{name}", layout.predictions(cfg, name), STAGE.sections, [layout.split(cfg)], body, force, extra)


def _without(model: Any, users: DataFrame, rated: DataFrame, k: int) -> DataFrame:
    """Top-``k`` per user of ``model`` with the items of ``rated`` removed (asks for enough extra items)."""
    extra = rated.groupBy(COL_USER).count().agg(F.max("count")).first()[0] or 0  # a scalar
    top = model.recommend(users, k + int(extra)).join(rated.select(COL_USER, COL_ITEM), [COL_USER, COL_ITEM], "left_anti")
    w = Window.partitionBy(COL_USER).orderBy(F.col(COL_RANK))
    cols = top.columns
    return top.withColumn(COL_RANK, F.row_number().over(w)).where(F.col(COL_RANK) <= k).select(*cols)


STAGE = Stage(
    name="predict", run=run_predict,
    help="fit models on the split; write their rating predictions and top-N on the valid and test parts",
    sections=(), inputs=lambda cfg, _m=None: [layout.split(cfg)],
    outputs=lambda cfg, m=None: [layout.predictions(cfg, n) for n in ([m] if m else cfg.models.names)],
    instances=lambda cfg: list(cfg.models.names), model_key="models.names", per_model_label=True,
)  # fmt: skip
