"""evaluate: metrics of every model and the blend on the test part (Parquet, JSON, Markdown, MLflow).

Beside the metrics: paired significance tests of the best model and of the
blend against every other model (NDCG@k per user, RMSE per rating; bootstrap
intervals, t-test and Wilcoxon p-values, Holm-adjusted: :mod:`recsys_spark.significance`)
and RMSE / NDCG@k by user and item segment (:mod:`recsys_spark.segments`).
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import evaluate as ev
from recsys_spark import metrics as M
from recsys_spark import segments as seg
from recsys_spark import selection as sel
from recsys_spark import significance as sig
from recsys_spark import split as spl
from recsys_spark import tracking
from recsys_spark.config import Config
from recsys_spark.io import fs
from recsys_spark.stages import layout
from recsys_spark.stages.manifest import run_stage
from recsys_spark.stages.stage import Stage, once

log = logging.getLogger(__name__)
DASHBOARD = "dashboard.html"
SERVING = "serving.json"  # benchmarks/serving.py's figures on the published model; the dashboard shows them


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
    rep.update(ev.topn_report(topn, truth, train, items, n_catalog, k, thr, per_user=per_user, name=name, business=True))
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
        flat = {m: {k: v for k, v in r.items() if k != "sources" and not isinstance(v, str)} for m, r in rows.items()}
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
            "model_order": [*names, "blend"],  # results.json sorts its keys; the report keeps the config's order
        }
        models = [*names, "blend"]
        errors = _errors(spark, cfg, models, test).persist()
        ndcg = f"ndcg@{cfg.evaluate.k}"
        per_user_df = spark.read.parquet(f"{tmp}/per_user").select("user_idx", "model", ndcg)  # written above: not recomputed
        sig_all, sampled = _significance(cfg, flat, models, errors, per_user_df, ndcg)
        payload["significance"] = sig_all
        payload["intervals"] = _intervals(sampled, models, ndcg)
        sampled["per_user_path"] = f"{tmp}/per_user"
        costs = model_costs(spark, cfg, models, blend, metric)
        payload["costs"] = costs
        choice = _selection(spark, cfg, flat, models, costs, sampled, ndcg)
        payload["selection"] = choice
        log.info("selection: %s", choice.get("rationale") or choice.get("skipped"))
        seg_table = seg.segment_table(
            errors, per_user_df,
            seg.user_segments(train, layout.read_ingested(spark, cfg, "users")), seg.item_segments(train, items), ndcg,
        )  # fmt: skip
        seg_table.coalesce(1).write.parquet(f"{tmp}/segments")
        seg_rows = spark.read.parquet(f"{tmp}/segments").collect()  # kinds x segments x models: a few hundred rows
        md = (
            f"# Results: {cfg.dataset_name}, split {layout.split_name(cfg)}\n\n"
            f"Test rows: {test.count()}; blend = {blend['counts']['chosen']} (chosen on the validation part).\n"
            f"By {metric}: blend {flat['blend'][metric]:.4f}, best single model {best} {flat[best][metric]:.4f}.\n\n"
            + ev.results_markdown(rows, cfg.evaluate.k)
            + f"\nIntra-list diversity from {rows['blend'].get('diversity_basis', 'genres')} "
            f"({'the items have no features' if rows['blend'].get('diversity_basis') == 'co-occurrence' else 'item genres'}); "
            f"serendipity@{cfg.evaluate.k}: relevant and not among the {cfg.evaluate.k} most rated training items.\n"
            + "\n## Selection\n\n" + (choice.get("rationale") or choice["skipped"]) + "\n\n"
            + significance_markdown(sig_all)
            + costs_markdown(costs)
            + _segments_markdown(seg_rows, models, ndcg)
        )
        errors.unpersist()
        fs.write_json(spark, f"{tmp}/results.json", payload)
        fs.write_text(spark, f"{tmp}/results.md", md)
        page = dashboard_page(spark, cfg, payload, [r.asDict() for r in seg_rows])
        fs.write_text(spark, f"{tmp}/{DASHBOARD}", page)
        log.info("results:\n%s", md)
        run_id = None
        if cfg.tracking.enabled:
            with tempfile.TemporaryDirectory() as local:
                texts = (("results.md", md), ("results.json", json.dumps(payload, indent=2, default=str)), (DASHBOARD, page))
                for fname, text in texts:
                    Path(local, fname).write_text(text)
                params = {**tracking.flatten("", {s: cfg.to_dict()[s] for s in ("dataset", "split", "models", "evaluate")})}
                metrics = tracking.flatten("", flat)
                run_id = tracking.log_run(
                    cfg, f"evaluate {cfg.dataset_name}", params, metrics, [str(Path(local, f)) for f, _ in texts]
                )
        for df in (test, train, items):
            df.unpersist()
        return {"models": flat, "blend": blend["counts"]["chosen"], "mlflow_run_id": run_id}

    inputs = [layout.predictions(cfg, n) for n in names] + [layout.blend(cfg)]
    return run_stage(spark, cfg, "evaluate", output, STAGE.sections, inputs, body, force, {"models": names})


def dashboard_page(spark: SparkSession, cfg: Config, payload: dict[str, Any], seg_rows: list[dict]) -> str:
    """The HTML dashboard (:mod:`recsys_spark.report`) with the costs, learning curves and factors the outputs hold."""
    from recsys_spark import report

    choice = payload.get("selection", {})
    curves = {}
    for name in cfg.models.names:
        hist = ((fs.read_manifest(spark, layout.predictions(cfg, name)) or {}).get("counts") or {}).get("history")
        if hist:
            curves[name] = hist
    projection = None
    fz = cfg.factorize.model
    if fz and fs.exists(spark, f"{layout.factors(cfg, fz)}/item_factors"):
        pdf = spark.read.parquet(f"{layout.factors(cfg, fz)}/item_factors").toPandas()  # one row per item
        if "factors" in pdf.columns and len(pdf):
            factors = np.stack(pdf["factors"].to_numpy())
            pop = layout.read_ingested(spark, cfg).groupBy("item_idx").count().toPandas().set_index("item_idx")["count"]
            projection = (fz, np.asarray(factors, dtype=np.float64), pdf["item_idx"].map(pop).fillna(0).to_numpy(dtype=np.float64))
    serving = None  # written by benchmarks/serving.py beside results.json; a rerun of evaluate drops it with the rest
    if fs.exists(spark, f"{layout.evaluate(cfg)}/{SERVING}"):
        serving = json.loads(fs.read_text(spark, f"{layout.evaluate(cfg)}/{SERVING}"))
    return report.dashboard(payload, seg_rows, choice.get("costs_s"), curves, projection, serving)


def _errors(spark: SparkSession, cfg: Config, models: list[str], test: DataFrame) -> DataFrame:
    """``(user_idx, item_idx, model, err)``: every model's error on every test rating (the contract: one row per pair)."""
    preds = None
    for name in models:
        root = layout.blend(cfg) if name == "blend" else layout.predictions(cfg, name)
        p = spark.read.parquet(f"{root}/test/ratings").select("user_idx", "item_idx", F.lit(name).alias("model"), "prediction")
        preds = p if preds is None else preds.unionByName(p)
    truth = test.select("user_idx", "item_idx", F.col("rating").alias("_y"))
    return preds.join(truth, ["user_idx", "item_idx"]).select(
        "user_idx", "item_idx", "model", (F.col("prediction") - F.col("_y")).alias("err")
    )  # one join for all the models


def _user_sample(df: DataFrame, n_units: int, cap: int) -> tuple[DataFrame, float]:
    """A seeded hash sample of users whose rows number about ``cap`` (all of them when under it)."""
    if n_units <= cap:
        return df, 1.0
    frac = cap / n_units
    return df.where((F.abs(F.xxhash64("user_idx", F.lit(42))) % 1_000_000) < int(frac * 1_000_000)), frac


def _wide(df: DataFrame, keys: list[str], value: str, models: list[str]) -> Any:
    """Long ``(keys, model, value)`` rows collected once and pivoted on the driver: a column per model, sorted by ``keys``."""
    pdf = df.select(*keys, "model", value).toPandas()
    wide = pdf.pivot_table(index=keys, columns="model", values=value, aggfunc="first").reset_index()
    missing = [m for m in models if m not in wide.columns]
    if missing or wide[models].isna().any().any():
        raise ValueError(f"evaluate: the models' test outputs do not cover the same {keys} (missing or partial: {missing or models})")
    return wide.sort_values(keys)


def _significance(cfg: Config, flat: dict, models: list[str], errors: DataFrame, per_user: DataFrame, ndcg: str) -> dict[str, Any]:
    """Paired tests of the best model and of the blend (the selected recommender) against every other model."""
    cap = cfg.evaluate.max_test_rows_for_tests
    out: dict[str, Any] = {}
    # NDCG@k: one value per test user per model
    users, frac_u = _user_sample(per_user, int(flat[models[0]]["users"]), cap)
    wide = _wide(users, ["user_idx"], ndcg, models)  # at most about `cap` users x models
    refs = list(dict.fromkeys([max(models, key=lambda m: flat[m][ndcg]), "blend"]))
    values = {m: wide[m].to_numpy(dtype=np.float64) for m in models}
    out[ndcg] = {
        "references": refs, "units": "users", "n": int(len(wide)), "sampled_fraction": frac_u,
        "rows": sig.compare_all(values, refs),
    }  # fmt: skip
    wide_users = wide
    # RMSE: per-rating squared errors, users resampled with their rows for the interval
    rated, frac_r = _user_sample(errors, int(flat[models[0]]["rows"]), cap)
    wide = _wide(rated, ["user_idx", "item_idx"], "err", models)  # at most about `cap` ratings x models
    refs = list(dict.fromkeys([min(models, key=lambda m: flat[m]["rmse"]), "blend"]))
    values = {m: wide[m].to_numpy(dtype=np.float64) for m in models}
    out["rmse"] = {
        "references": refs, "units": "ratings", "n": int(len(wide)), "sampled_fraction": frac_r,
        "rows": sig.compare_all(values, refs, users=wide["user_idx"].to_numpy()),
    }  # fmt: skip
    return out, {"users": wide_users, "ratings": wide}


def _intervals(sampled: dict[str, Any], models: list[str], ndcg: str) -> dict[str, dict[str, list[float]]]:
    """Each model's NDCG@k and RMSE with a bootstrap 95% interval (users resampled, with their ratings for RMSE)."""
    users, ratings = sampled["users"], sampled["ratings"]
    out: dict[str, dict[str, list[float]]] = {}
    for m in models:
        v = users[m].to_numpy(dtype=np.float64)
        b = M.paired_bootstrap(v, np.zeros_like(v))
        e = ratings[m].to_numpy(dtype=np.float64)
        r = M.paired_rmse_bootstrap(ratings["user_idx"].to_numpy(), np.zeros_like(e), e)
        out[m] = {ndcg: [b["diff"], b["ci95_lo"], b["ci95_hi"]], "rmse": [r["diff"], r["ci95_lo"], r["ci95_hi"]]}
    return out


def _selection(
    spark: SparkSession, cfg: Config, flat: dict, models: list[str], cost_rows: dict[str, dict[str, Any]], sampled: dict, ndcg: str
) -> dict[str, Any]:  # fmt: skip
    """The declared selection (evaluate.select_metric, max_cost_s, max_recommend_s_per_1k_users, min_coverage) with its rationale."""
    e = cfg.evaluate
    metric = e.select_metric
    if metric == "rmse":
        wide = sampled["ratings"]
        values, users = {m: wide[m].to_numpy(dtype=np.float64) for m in models}, wide["user_idx"].to_numpy()
    elif metric == ndcg:
        wide, users = sampled["users"], None
        values = {m: wide[m].to_numpy(dtype=np.float64) for m in models}
    else:
        per_user = spark.read.parquet(f"{sampled['per_user_path']}")
        if metric not in per_user.columns:
            why = f"evaluate.select_metric = {metric!r} has no per-user or per-rating values to test (use rmse or a ranking metric)"
            return {"skipped": why}
        rows, _ = _user_sample(per_user.select("user_idx", "model", metric), int(flat[models[0]]["users"]), e.max_test_rows_for_tests)
        wide, users = _wide(rows, ["user_idx"], metric, models), None
        values = {m: wide[m].to_numpy(dtype=np.float64) for m in models}
    costs = {m: float(cost_rows[m].get("stage_s") or 0.0) for m in models}
    latency = {m: float(cost_rows[m]["recommend_s_per_1k_users"]) for m in models if cost_rows[m].get("recommend_s_per_1k_users")}
    coverage = {m: float(flat[m].get("coverage", 0.0)) for m in models}
    return sel.select(
        metric, {m: float(flat[m][metric]) for m in models}, costs, coverage, values, users,
        e.max_cost_s, e.min_coverage, e.alpha, latency, e.max_recommend_s_per_1k_users,
    )  # fmt: skip


def model_costs(spark: SparkSession, cfg: Config, models: list[str], blend: dict, metric: str) -> dict[str, dict[str, Any]]:
    """Per model, the predict stage's costs of the fit that predicted test (``cost`` in its manifest,
    see :mod:`recsys_spark.stages.predict`) and ``stage_s``, the stage's seconds.

    The blend's: its stage's seconds plus its members' (those it fused for
    ``metric``); to recommend, its members' seconds per 1,000 users summed plus
    its own stage's over the test users; peak memory the largest of its members'.
    """
    out: dict[str, dict[str, Any]] = {}
    for m in models:
        if m == "blend":
            continue
        man = fs.read_manifest(spark, layout.predictions(cfg, m)) or {}
        out[m] = {"stage_s": float(man.get("wall_s") or 0.0), **((man.get("counts") or {}).get("cost") or {})}
    counts = blend["counts"]
    members = counts["members"] if metric in ev.LOWER_IS_BETTER else counts["topn"]["chosen"]["members"]
    own = float(blend.get("wall_s") or 0.0)
    row: dict[str, Any] = {"stage_s": own + sum(out.get(m, {}).get("stage_s", 0.0) for m in members), "members": list(members)}
    have = [out[m] for m in members if m in out]
    if have and all(c.get("recommend_s_per_1k_users") for c in have):
        first = (fs.read_manifest(spark, layout.predictions(cfg, members[0])) or {}).get("counts", {})
        users = max(int(first.get("test", {}).get("users") or 0), 1)
        row["recommend_s_per_1k_users"] = round(sum(c["recommend_s_per_1k_users"] for c in have) + 1000 * own / users, 3)
    for key in ("peak_driver_python_mb", "peak_jvm_heap_mb", "peak_python_workers_mb"):
        if have and all(key in c for c in have):
            row[key] = max(c[key] for c in have)
    if have and all("model_mb" in c for c in have):
        row["model_mb"] = round(sum(c["model_mb"] for c in have), 3)
    out["blend"] = row
    return out


def costs_markdown(costs: dict[str, dict[str, Any]]) -> str:
    """The cost table: seconds, throughput, peak memory (sampled, MB) and the saved model's size."""
    from recsys_spark.report import COST_COLUMNS

    head = "| model | " + " | ".join(h for _, h in COST_COLUMNS) + " |\n|---|" + "---:|" * len(COST_COLUMNS) + "\n"
    body = "".join(
        f"| {m} | " + " | ".join("" if c.get(key) is None else f"{c[key]:g}" for key, _ in COST_COLUMNS) + " |\n"
        for m, c in costs.items()
    )
    return (
        "## Cost\n\nThe fit that predicted test: seconds, throughput, peak memory sampled every 0.2 s while it fitted, "
        "predicted and recommended (the JVM heap in use, garbage included; the Python workers summed), "
        "and the saved model's size. The blend: its members' seconds and sizes summed, their largest peaks.\n\n"
        + head + body + "\n"
    )


def significance_markdown(sig_all: dict[str, Any]) -> str:
    """The paired comparisons as tables: difference with its interval, Holm-adjusted p-values."""
    parts = []
    for metric, s in sig_all.items():
        sampled = "" if s["sampled_fraction"] >= 1 else f", a {s['sampled_fraction']:.1%} hash sample of users"
        parts.append(
            f"## Paired comparisons, {metric} ({s['n']} {s['units']}{sampled})\n\n"
            f"Positive differences favour the reference; p-values Holm-adjusted over the {len(s['rows'])} comparisons.\n\n"
            "| reference | model | difference (95% CI) | t-test p | Wilcoxon p | significant (Holm, 0.05) |\n"
            "|---|---|---|---:|---:|---|\n"
            + "".join(
                f"| {r['reference']} | {r['model']} | {r['diff']:+.4f} [{r['ci95_lo']:+.4f}, {r['ci95_hi']:+.4f}] | "
                f"{r['t_p_holm']:.3g} | {r['wilcoxon_p_holm']:.3g} | "
                f"{'yes' if max(r['t_p_holm'], r['wilcoxon_p_holm']) < 0.05 else 'no'} |\n"
                for r in s["rows"]
            )
        )
    return "\n".join(parts) + "\n"


def _segments_markdown(rows: list, models: list[str], ndcg: str) -> str:
    parts = ["## By segment\n"]
    for kind in ("user activity", "user rating variance", "user gender", "user age"):
        for metric in (ndcg, "rmse"):
            t = seg.markdown(rows, models, kind, metric)
            if t:
                parts.append(f"### {metric} by {kind}\n\n{t}")
    for kind in ("item popularity", "item genre"):
        t = seg.markdown(rows, models, kind, "rmse")
        if t:
            parts.append(f"### rmse by {kind}\n\n{t}")
    return "\n".join(parts)


def _inputs(cfg: Config, _model: str | None = None) -> list[str]:
    return [layout.predictions(cfg, n) for n in cfg.models.names] + [layout.blend(cfg)]


STAGE = Stage(
    name="evaluate", run=run_evaluate,
    help="metrics of every model and the blend on the test part: Parquet, JSON, Markdown and an MLflow run",
    sections=("evaluate", "tracking"), inputs=_inputs, outputs=lambda cfg, _m=None: [layout.evaluate(cfg)], instances=once,
)  # fmt: skip
