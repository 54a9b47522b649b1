"""publish: the final job's lists registered in MLflow as the champion, with a model card.

Reads the final job's output (every user's explained list and the cold-start
list) and the evaluate stage's report (the blend's metrics with intervals,
its paired comparisons, the selection, the segments), writes
``publish/model_card.md``, logs the lists as a pyfunc model
(:mod:`recsys_spark.serving`), registers a new version of
``publish.model_name`` and moves ``publish.alias`` (``champion``) to it.

The served lists are the blend the blend stage chose on the validation part,
refit on every rating by the final job.  The evaluate stage's selection is
made on the test part; when it names another model, the card says so and how
to serve that one (``final.members``), rather than switching on test figures.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from recsys_spark import serving
from recsys_spark.config import Config
from recsys_spark.io import fs
from recsys_spark.stages import layout
from recsys_spark.stages.final import COLD_TABLE, read_final
from recsys_spark.stages.manifest import run_stage
from recsys_spark.stages.stage import Stage

log = logging.getLogger(__name__)
CARD = "model_card.md"


def run_publish(spark: SparkSession, cfg: Config, force: bool = False) -> dict[str, Any]:
    """Register the final lists as ``models:/<publish.model_name>@<publish.alias>``; write the model card."""

    def body(tmp: str) -> dict[str, Any]:
        final = fs.read_manifest(spark, layout.final(cfg))
        report_path = f"{layout.evaluate(cfg)}/results.json"
        if final is None or not fs.exists(spark, report_path):
            raise FileNotFoundError(f"publish needs the final and evaluate outputs ({layout.final(cfg)}, {report_path}): run them first")
        report = json.loads(fs.read_text(spark, report_path))
        ingest = fs.read_manifest(spark, layout.ingested(cfg)) or {}
        segments = [r.asDict() for r in spark.read.parquet(f"{layout.evaluate(cfg)}/segments").where("model = 'blend'").collect()]
        table = read_final(spark, cfg)
        cold = spark.read.parquet(f"{layout.final(cfg)}/{COLD_TABLE}")
        fc = final["counts"]
        meta = {
            "dataset": cfg.dataset_name, "k": cfg.models.k, "method": fc["method"], "members": fc["members"],
            "chosen_by": fc["chosen_by"], "final_output_id": final.get("output_id"), "created": final.get("created"),
        }  # fmt: skip
        card = model_card(cfg, report, fc, ingest.get("counts", {}), segments)
        with tempfile.TemporaryDirectory() as local:
            data = Path(local, "data")
            counts = serving.write_artifacts(table, cold, meta, data)
            card_path = Path(local, CARD)
            card_path.write_text(card)
            example = table.select("user_id").first()[0]
            blend = report["models"]["blend"]
            metrics = {k: v for k, v in blend.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            params = {"dataset": cfg.dataset_name, "method": fc["method"], "members": ",".join(fc["members"]), "k": cfg.models.k,
                      "chosen_by": fc["chosen_by"], "split": report.get("split", "")}  # fmt: skip
            reg = serving.register(cfg, data, card_path, metrics, params, str(example))
        fs.write_text(spark, f"{tmp}/{CARD}", card)
        log.info("publish: %s (%d users, %d rows; cold start %d items)", reg["model_uri"], counts["users"], counts["rows"],
                 counts["cold_start_rows"])  # fmt: skip
        return {**counts, **reg}

    inputs = [layout.final(cfg), layout.evaluate(cfg)]
    return run_stage(spark, cfg, "publish", layout.publish(cfg), STAGE.sections, inputs, body, force)


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def model_card(cfg: Config, report: dict[str, Any], final: dict[str, Any], ingest: dict[str, Any], segments: list[dict]) -> str:
    """The card: what is served, the data, the protocol, metrics with intervals, weak segments, limits."""
    k = cfg.evaluate.k
    ndcg = f"ndcg@{k}"
    blend = report["models"]["blend"]
    iv = report.get("intervals", {}).get("blend", {})
    ratings = ingest.get("tables", {}).get("ratings", {})
    best = report["best_single"]
    lines = [
        f"# Model card: {serving.model_name(cfg)}",
        "",
        "## What is served",
        "",
        f"The explained top-{cfg.models.k} list of every user: `{final['method']}` fusion of {', '.join(final['members'])} "
        f"(chosen by the {final['chosen_by']}), each member refit on every rating ({final['fit_rows']} ratings) by the final job. "
        f"Each item says why it is there (item neighbours from {final['explainer']}, the user's liked genres, recent popularity). "
        f"Users with no ratings ({final['cold_start_users']} in the user table) and user ids the data has never seen get the "
        "cold-start list: the most rated items of the last "
        f"{final['popular_lately_days'] or 'all'} days, with `known = false` for unseen ids.",
        "",
        "## Data",
        "",
        f"Dataset `{cfg.dataset_name}` ({cfg.dataset.kind}): {ratings.get('kept', '?')} ratings kept of {ratings.get('read', '?')} read "
        f"({ratings.get('quarantined', 0)} quarantined, {ratings.get('deduplicated', 0)} duplicates), {final['users']} users.",
        "",
        "## Evaluation protocol",
        "",
        f"Split `{report['split']}` (`split.protocol = {cfg.split.protocol}`): the members were fitted on the training part, "
        "the blend chosen on the validation part, and the figures below measured once on the test part "
        f"({blend.get('rows', '?')} ratings, {blend.get('users', '?')} users; top-{k}, every unrated item ranked). "
        "Intervals: percentile bootstrap over users (2,000 resamples, seed 42).",
        "",
        "| metric | served blend | 95% interval |",
        "|---|---:|---|",
    ]
    for metric in (ndcg, "rmse"):
        if metric in iv:
            v, lo, hi = iv[metric]
            lines.append(f"| {metric} | {v:.4f} | [{lo:.4f}, {hi:.4f}] |")
    for metric in (f"hr@{k}", f"recall@{k}", "coverage", "novelty", "diversity", "gini", f"serendipity@{k}", "avg_popularity"):
        if metric in blend:
            label = f"diversity ({blend['diversity_basis']})" if metric == "diversity" and "diversity_basis" in blend else metric
            lines.append(f"| {label} | {_fmt(blend[metric])} | |")
    best_value = _fmt(report["models"][best["model"]].get(best["metric"]))
    lines += ["", f"Best single model by {best['metric']}: {best['model']} ({best_value}).", ""]
    rows = [r for s in report.get("significance", {}).values() for r in s["rows"] if r["reference"] == "blend"]
    if rows:
        lines += ["Paired comparisons of the blend (positive: the blend is better; Holm-adjusted p):", ""]
        lines += ["| model | metric | difference (95% CI) | p (Holm) |", "|---|---|---|---:|"]
        for metric, s in report["significance"].items():
            for r in s["rows"]:
                if r["reference"] == "blend":
                    p = max(r["t_p_holm"], r["wilcoxon_p_holm"])
                    lines.append(f"| {r['model']} | {metric} | {r['diff']:+.4f} [{r['ci95_lo']:+.4f}, {r['ci95_hi']:+.4f}] | {p:.3g} |")
        lines.append("")
    choice = report.get("selection", {})
    if choice.get("selected"):
        lines += ["## Selection", "", choice["rationale"], ""]
        if choice["selected"] != "blend":
            lines += [
                f"The report's selection on the test part is `{choice['selected']}`; the served lists are the blend chosen on "
                f"the validation part. To serve `{choice['selected']}` instead, set `final.members = [\"{choice['selected']}\"]` "
                "and rerun the pipeline (final and publish rerun).",
                "",
            ]
    weak = _weak_segments(segments, ndcg, blend)
    if weak:
        lines += ["## Where it is weak", "", *weak, ""]
    lines += [
        "## Limits",
        "",
        "- The lists are computed in batch: a rating given after the final job changes nothing until the next run.",
        f"- `exclude` removes items from the stored list, so the answer can be shorter than k; k above {cfg.models.k} returns "
        f"{cfg.models.k} items.",
        "- The cold-start list is by popularity, the same for every new user.",
        "- Offline figures on one split of one dataset; they rank models, they do not predict an online click rate.",
        "",
    ]
    return "\n".join(lines)


def _weak_segments(segments: list[dict], ndcg: str, blend: dict[str, Any]) -> list[str]:
    out = []
    users = sorted((r for r in segments if r.get(ndcg) is not None and (r.get("users") or 0) >= 5), key=lambda r: r[ndcg])[:3]
    for r in users:
        out.append(f"- {ndcg} {r[ndcg]:.4f} for users with {r['kind']} {r['segment']} ({r['users']} users; overall {blend[ndcg]:.4f})")
    rated = sorted((r for r in segments if r.get("rmse") is not None and (r.get("rows") or 0) >= 20), key=lambda r: -r["rmse"])[:3]
    for r in rated:
        out.append(f"- RMSE {r['rmse']:.4f} on {r['kind']} {r['segment']} ({r['rows']} test ratings; overall {blend['rmse']:.4f})")
    return out


def _inputs(cfg: Config, _model: str | None = None) -> list[str]:
    return [layout.final(cfg), layout.evaluate(cfg)]


STAGE = Stage(
    name="publish", run=run_publish,
    help="register the final lists in MLflow as the champion pyfunc model (alias), with a model card",
    sections=("publish", "tracking"), inputs=_inputs, outputs=lambda cfg, _m=None: [layout.publish(cfg)],
    instances=lambda cfg: [None] if cfg.publish.enabled and cfg.final.enabled and cfg.tracking.enabled else [],
)  # fmt: skip
