"""``recsys-spark tune``: Optuna search over a registered model's parameters.

    recsys-spark tune --model svd --trials 30 --out output/tuning/svd.json

The search space is declared in ``recsys_spark/conf/tuning/<model>.toml``::

    [study]
    n_trials = 30
    metric = "rmse"            # rmse (minimised), or a top-N metric (maximised):
                               # ndcg@K, precision@K, recall@K, map@K, hr@K, mrr@K
    [space.rank]
    type = "int"               # int | float | categorical
    low = 10
    high = 200
    log = true
    [fixed]                    # parameters held constant during the search
    batch_size = 1024

Protocol (never the test part): the training part of ML-100K fold ``u1``
(``--fold``) is split by a seeded hash of (user, item) into fit (90%) and
validation (10%); every trial fits on the first and scores RMSE on the
second, or -- for a top-N metric -- ranks the first ``K`` unseen items for
every validation user and scores them against that user's validation items
(all relevant, as in the top-N benchmark).  Trials are logged to MLflow (one
run per trial, nested under one run per study) and the best parameters are
written as JSON; copying them to ``recsys_spark/conf/models/<model>.toml`` makes them the
model's defaults.
"""

from __future__ import annotations

import json
import logging
import time
import tomllib
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import metrics as M
from recsys_spark import registry, stages
from recsys_spark.config import Config, SplitConfig
from recsys_spark.evaluate import rating_report
from recsys_spark.recommender import Scale
from recsys_spark.schemas import COL_ITEM, COL_TIMESTAMP, COL_USER

log = logging.getLogger(__name__)

# search spaces are package data, like the tuned defaults (see recsys_spark.registry)
TUNING_DIR: Traversable = resources.files("recsys_spark") / "conf" / "tuning"


def load_space(model: str, tuning_dir: Traversable | Path = TUNING_DIR) -> dict[str, Any]:
    path = tuning_dir / f"{model}.toml"
    if not path.is_file():
        raise ValueError(f"no search space for {model!r}: expected {path}")
    data = tomllib.loads(path.read_text())
    unknown = set(data) - {"study", "space", "fixed"}
    if unknown:
        raise ValueError(f"{path}: unknown table(s) {sorted(unknown)}; use [study], [space.<param>], [fixed]")
    try:
        parse_metric(data.get("study", {}).get("metric", "rmse"))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    for name, spec in data.get("space", {}).items():
        kind = spec.get("type")
        if kind not in ("int", "float", "categorical"):
            raise ValueError(f"{path}: space.{name}.type must be int, float or categorical, got {kind!r}")
        if kind == "categorical" and not spec.get("choices"):
            raise ValueError(f"{path}: space.{name} needs choices")
        if kind != "categorical" and not ("low" in spec and "high" in spec and spec["low"] <= spec["high"]):
            raise ValueError(f"{path}: space.{name} needs low <= high")
    return data


def suggest(trial: Any, space: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, spec in space.items():
        if spec["type"] == "int":
            params[name] = trial.suggest_int(name, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log", False)))
        elif spec["type"] == "float":
            params[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log", False)))
        else:
            params[name] = trial.suggest_categorical(name, list(spec["choices"]))
    return params


def holdout(train: DataFrame, ratio: float = 0.1, seed: int = 42) -> tuple[DataFrame, DataFrame]:
    """(fit, valid) by a seeded hash of (user, item): deterministic, no lazy re-sampling."""
    bucket = F.pmod(F.xxhash64(COL_USER, COL_ITEM, F.lit(seed)), F.lit(10_000)) < int(ratio * 10_000)
    return train.where(~bucket), train.where(bucket)


def validation_parts(
    spark: SparkSession, cfg: Config, fold: int = 1, ratio: float = 0.1, seed: int = 42
) -> tuple[Scale, DataFrame, DataFrame]:
    """``(scale, fit, valid)``: the tuning protocol's data, ML-100K ``u<fold>.base`` ingested, split and held out (persisted)."""
    cfg = _rating_cfg(cfg)
    stages.run_ingest(spark, cfg)
    stages.run_split(spark, cfg)
    fit_part, valid = holdout(stages.read_split(spark, cfg, "train", fold=fold), ratio, seed)
    return stages.rating_scale(spark, cfg), fit_part.persist(), valid.persist()


def run_tune(spark: SparkSession, cfg: Config, model: str, n_trials: int | None = None, fold: int = 1,
             seed: int = 42, tuning_dir: Traversable | Path = TUNING_DIR) -> dict[str, Any]:  # fmt: skip
    import optuna

    if model not in registry.REGISTRY:
        raise ValueError(f"unknown model {model!r}; registered: {', '.join(sorted(registry.REGISTRY))}")
    spec = load_space(model, tuning_dir)
    study_cfg = spec.get("study", {})
    n_trials = n_trials or int(study_cfg.get("n_trials", 20))
    cfg = _rating_cfg(cfg)
    scale, fit_part, valid = validation_parts(spark, cfg, fold, float(study_cfg.get("valid_ratio", 0.1)), seed)
    log.info("tuning %s: %d fit rows, %d validation rows (from u%d.base only)", model, fit_part.count(), valid.count(), fold)
    tracker = _Tracker(cfg, model)
    metric, direction, objective = make_objective(model, spec, scale, fit_part, valid, tracker)

    sampler = optuna.samplers.TPESampler(seed=seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction=direction, sampler=sampler, study_name=f"{model}-u{fold}")
    tracker.start()
    try:
        study.optimize(objective, n_trials=n_trials)
    finally:
        tracker.stop({f"best_{_key(metric)}": study.best_value if study.trials else float("nan")})
    best = {**spec.get("fixed", {}), **study.best_params}
    result = {
        "model": model,
        "protocol": {"dataset": cfg.dataset_name, "fold": f"u{fold}", "valid": "10% hash holdout of the training part", "seed": seed},
        "n_trials": n_trials, "metric": metric, "best_value": study.best_value, "best_params": best,
        "trials": [{"number": t.number, metric: t.value, "params": t.params} for t in study.trials],
    }  # fmt: skip
    if metric == "rmse":
        result["best_rmse"] = study.best_value
    fit_part.unpersist()
    valid.unpersist()
    return result


TOPN_METRICS = ("ndcg", "precision", "recall", "map", "hr", "mrr")


def parse_metric(metric: str) -> tuple[str, int | None]:
    """``"rmse"`` -> ("rmse", None); ``"ndcg@10"`` -> ("ndcg@10", 10); anything else is an error."""
    if metric == "rmse":
        return metric, None
    name, _, k = metric.partition("@")
    if name not in TOPN_METRICS or not k.isdigit() or int(k) < 1:
        raise ValueError(f"study metric must be rmse or one of {', '.join(m + '@K' for m in TOPN_METRICS)}, got {metric!r}")
    return metric, int(k)


def make_objective(model: str, spec: dict[str, Any], scale: Any, fit_part: DataFrame, valid: DataFrame,
                   tracker: Any = None) -> tuple[str, str, Any]:  # fmt: skip
    """(metric, Optuna direction, objective(trial)) for ``spec``'s study metric on ``fit_part`` / ``valid``."""
    metric, k = parse_metric(spec.get("study", {}).get("metric", "rmse"))
    users = valid.select(COL_USER).distinct() if k else None

    def objective(trial: Any) -> float:
        params = {**spec.get("fixed", {}), **suggest(trial, spec.get("space", {}))}
        t = time.perf_counter()
        m = registry.build(model, scale, params).fit(fit_part)
        if k is None:
            cols = [COL_USER, COL_ITEM] + ([COL_TIMESTAMP] if COL_TIMESTAMP in valid.columns else [])
            value = rating_report(m.predict(valid.select(*cols)), valid)["rmse"]
        else:
            value = M.ranking_metrics(m.recommend(users, k), valid, k).metrics[metric]
        secs = time.perf_counter() - t
        log.info("trial %d: %s %.4f with %s (%.1fs)", trial.number, metric, value, params, secs)
        if tracker is not None:
            tracker.trial(trial.number, params, {_key(metric): value, "seconds": secs})
        return value

    return metric, "minimize" if k is None else "maximize", objective


def _key(metric: str) -> str:
    """An MLflow-safe metric name (no ``@``)."""
    return metric.replace("@", "_at_")


def _rating_cfg(cfg: Config) -> Config:
    import dataclasses

    if cfg.dataset.kind != "ml-100k":
        raise ValueError("tuning uses the ML-100K folds' training parts: --set dataset.kind=ml-100k")
    return dataclasses.replace(cfg, split=SplitConfig(protocol="ml100k_folds"))


class _Tracker:
    """MLflow: one parent run per study, one nested run per trial (off when tracking is disabled)."""

    def __init__(self, cfg: Config, model: str) -> None:
        self.cfg, self.model, self.parent = cfg, model, None

    def start(self) -> None:
        if not self.cfg.tracking.enabled:
            return
        import mlflow

        from recsys_spark.tracking import tracking_uri

        uri, artifacts = tracking_uri(self.cfg)
        mlflow.set_tracking_uri(uri)
        name = f"{self.cfg.tracking.experiment}-tuning"
        exp = mlflow.MlflowClient(uri).get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp else mlflow.MlflowClient(uri).create_experiment(name, artifact_location=artifacts)
        self.parent = mlflow.start_run(experiment_id=exp_id, run_name=f"tune-{self.model}")
        mlflow.set_tag("model", self.model)

    def trial(self, number: int, params: dict[str, Any], metrics: dict[str, float]) -> None:
        if self.parent is None:
            return
        import mlflow

        with mlflow.start_run(run_name=f"{self.model}-trial-{number}", nested=True):
            mlflow.log_params({k: str(v) for k, v in params.items()})
            mlflow.log_metrics(metrics)

    def stop(self, metrics: dict[str, float]) -> None:
        if self.parent is None:
            return
        import mlflow

        mlflow.log_metrics({k: v for k, v in metrics.items() if v == v})
        mlflow.end_run()


def write(result: dict[str, Any], out: str | None) -> None:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
