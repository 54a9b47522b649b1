"""evaluate: metrics of every model and the blend on the test part (Parquet, JSON, Markdown, MLflow)."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from recsys_spark import evaluate as ev
from recsys_spark import split as spl
from recsys_spark import tracking
from recsys_spark.config import Config
from recsys_spark.io import fs
from recsys_spark.stages import layout
from recsys_spark.stages.manifest import run_stage
from recsys_spark.stages.stage import Stage, once

log = logging.getLogger(__name__)


def score_predictions(
    spark: SparkSession, cfg: Config, name: str, part: str, truth: DataFrame, train: DataFrame,
    items: DataFrame, n_catalog: int, pred_root: str | None = None, per_user: list[DataFrame] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Rating and top-N metrics of the predictions under ``pred_root`` (default: ``name``'s) on ``part``."""
    root = pred_root or layout.predictions(cfg, name)
    k = cfg.evaluate.k
    thr = cfg.evaluate.relevance_threshold or None
    ratings = spark.read.parquet(f"{root}/{part}/ratings")
    topn = spark.read.parquet(f"{root}/{part}/topn")
    rep = ev.rating_report(ratings, truth, primary_is_fallback=name == "global_mean")
    rep.update(ev.topn_report(topn, truth, train, items, n_catalog, k, thr, per_user=per_user, name=name))
    return rep


def run_evaluate(spark: SparkSession, cfg: Config, force: bool = False) -> dict[str, Any]:
    """Metrics of every model and the blend on the test part: Parquet + JSON + Markdown, MLflow."""
    names = cfg.models.names
    output = layout.evaluate(cfg)

    def body(tmp: str) -> dict[str, Any]:
        test = layout.read_split(spark, cfg, spl.TEST).persist()
        train = layout.read_split(spark, cfg, spl.TRAIN).unionByName(layout.read_split(spark, cfg, spl.VALID)).persist()
        items = layout.read_ingested(spark, cfg, "items").persist()
        n_catalog = items.count()
        rows: dict[str, dict[str, Any]] = {}
        per_user: list[DataFrame] = []
        for name in names:
            rows[name] = score_predictions(spark, cfg, name, "test", test, train, items, n_catalog, per_user=per_user)
        rows["blend"] = score_predictions(
            spark, cfg, "blend", "test", test, train, items, n_catalog, pred_root=layout.blend(cfg), per_user=per_user
        )
        # per-user values of every model, for significance tests and slicing by user segment
        union = per_user[0]
        for df in per_user[1:]:
            union = union.unionByName(df)
        union.write.partitionBy("model").parquet(f"{tmp}/per_user")
        blend = fs.read_manifest(spark, layout.blend(cfg))
        flat = {m: {k: v for k, v in r.items() if k != "sources"} for m, r in rows.items()}
        metric_names = sorted({k for r in flat.values() for k in r})
        table = spark.createDataFrame(
            [(m, *[float(r.get(c, float("nan"))) for c in metric_names]) for m, r in flat.items()],
            "model string, " + ", ".join(f"`{c}` double" for c in metric_names),
        )
        table.coalesce(1).write.parquet(f"{tmp}/results")
        metric = cfg.evaluate.select_metric
        if metric not in flat["blend"]:
            raise ValueError(f"evaluate.select_metric = {metric!r} is not one of {sorted(flat['blend'])}")
        best = names[0]
        for name in names[1:]:
            if ev.better(metric, flat[name][metric], flat[best][metric]):
                best = name
        payload = {
            "dataset": cfg.dataset_name,
            "split": layout.split_name(cfg),
            "k": cfg.evaluate.k,
            "blend": blend["counts"],
            "best_single": {"metric": metric, "model": best},
            "models": rows,
        }
        md = (
            f"# Results: {cfg.dataset_name}, split {layout.split_name(cfg)}\n\n"
            f"Test rows: {test.count()}; blend = {blend['counts']['chosen']} (chosen on the validation part).\n"
            f"By {metric}: blend {flat['blend'][metric]:.4f}, best single model {best} {flat[best][metric]:.4f}.\n\n"
            + ev.results_markdown(rows, cfg.evaluate.k)
        )
        fs.write_json(spark, f"{tmp}/results.json", payload)
        fs.write_text(spark, f"{tmp}/results.md", md)
        log.info("results:\n%s", md)
        run_id = None
        if cfg.tracking.enabled:
            with tempfile.TemporaryDirectory() as local:
                for fname, text in (("results.md", md), ("results.json", json.dumps(payload, indent=2, default=str))):
                    Path(local, fname).write_text(text)
                params = {**tracking.flatten("", {s: cfg.to_dict()[s] for s in ("dataset", "split", "models", "evaluate")})}
                metrics = tracking.flatten("", flat)
                run_id = tracking.log_run(
                    cfg, f"evaluate {cfg.dataset_name}", params, metrics, [str(Path(local, "results.md")), str(Path(local, "results.json"))]
                )
        for df in (test, train, items):
            df.unpersist()
        return {"models": flat, "blend": blend["counts"]["chosen"], "mlflow_run_id": run_id}

    inputs = [layout.predictions(cfg, n) for n in names] + [layout.blend(cfg)]
    return run_stage(spark, cfg, "evaluate", output, STAGE.sections, inputs, body, force, {"models": names})


def _inputs(cfg: Config, _model: str | None = None) -> list[str]:
    return [layout.predictions(cfg, n) for n in cfg.models.names] + [layout.blend(cfg)]


STAGE = Stage(
    name="evaluate", run=run_evaluate,
    help="metrics of every model and the blend on the test part: Parquet, JSON, Markdown and an MLflow run",
    sections=("evaluate", "tracking"), inputs=_inputs, outputs=lambda cfg, _m=None: [layout.evaluate(cfg)], instances=once,
)  # fmt: skip
