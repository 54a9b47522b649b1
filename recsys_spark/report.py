"""The dashboard: one self-contained static HTML file of the evaluate stage's report.

Tables and figures, every figure an inline SVG drawn with matplotlib (no
script, no network, nothing outside the file):

* ``summary``: dataset, split, the selection and its rationale;
* ``metrics``: NDCG@k and RMSE by model with their bootstrap 95% intervals;
* ``table``: every metric of every model;
* ``significance``: the paired comparisons, Holm-adjusted;
* ``segments``: a heat-map of NDCG@k by user segment and model (RMSE by item
  popularity beside it);
* ``cost``: accuracy against the predict stage's wall time, the Pareto front
  marked;
* ``curves``: per-epoch training loss (and validation metric) of the models
  that record one;
* ``projection``: item factors projected on their first two principal
  components, coloured by popularity, where a factorize stage ran.

:func:`dashboard` is pure (dicts in, a string out); the evaluate stage and
``recsys-spark report`` call it.
"""

from __future__ import annotations

import html
import io
import math
import re
from typing import Any

import numpy as np

SECTIONS = ("summary", "metrics", "table", "significance", "segments", "cost", "curves", "projection", "serving")
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ddd;padding:3px 7px;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f4f4f4}.note{color:#666;font-size:.9em}
.wide{overflow-x:auto}.fig{margin:.5em 0}.fig svg{max-width:100%;height:auto}
"""


def _svg(fig: Any) -> str:
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "recsys-spark"}):  # element ids from content, not random: the same page twice
        fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)  # its date would make every page differ
    return text[text.index("<svg") :]  # drop the XML prolog and doctype: inline in HTML


def _figure(w: float = 7.0, h: float = 3.5) -> Any:
    from matplotlib.figure import Figure  # no pyplot: no global state, no backend to choose

    return Figure(figsize=(w, h), dpi=100)


def _num(v: Any, digits: int = 4) -> str:
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, (int, np.integer)):
        return f"{int(v)}"
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.{digits}f}"
    return html.escape(str(v))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_num(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<div class='wide'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _intervals_figure(intervals: dict[str, dict[str, list[float]]], models: list[str], ndcg: str) -> str:
    fig = _figure(9, max(2.5, 0.35 * len(models) + 1))
    for j, metric in enumerate((ndcg, "rmse")):
        ax = fig.add_subplot(1, 2, j + 1)
        have = [m for m in models if metric in intervals.get(m, {})]
        y = np.arange(len(have))
        v = np.array([intervals[m][metric] for m in have]) if have else np.zeros((0, 3))
        if len(have):
            ax.errorbar(v[:, 0], y, xerr=[v[:, 0] - v[:, 1], v[:, 2] - v[:, 0]], fmt="o", capsize=3, color="#1f77b4")
        ax.set_yticks(y, have, fontsize=8)
        ax.set_title(f"{metric} (95% bootstrap interval)", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        if j:
            ax.set_yticklabels([])
    return _svg(fig)


def _heatmap(seg_rows: list[dict], models: list[str], kind: str, metric: str) -> str:
    rows = sorted({(r["segment_order"], r["segment"]) for r in seg_rows if r["kind"] == kind and r.get(metric) is not None})
    if not rows:
        return f"<p class='note'>No {html.escape(kind)} segments.</p>"
    grid = np.full((len(rows), len(models)), np.nan)
    index = {s: i for i, (_, s) in enumerate(rows)}
    for r in seg_rows:
        if r["kind"] == kind and r["model"] in models and r.get(metric) is not None:
            grid[index[r["segment"]], models.index(r["model"])] = r[metric]
    fig = _figure(max(5, 0.7 * len(models) + 2), max(2.5, 0.3 * len(rows) + 1.2))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(grid, aspect="auto", cmap="viridis_r" if metric == "rmse" else "viridis")
    ax.set_xticks(range(len(models)), models, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), [s for _, s in rows], fontsize=8)
    lo, hi = np.nanmin(grid), np.nanmax(grid)
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            if not np.isnan(grid[i, j]):
                light = (grid[i, j] - lo) / max(hi - lo, 1e-12)  # viridis is light at its top end
                light = 1 - light if metric == "rmse" else light
                ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", fontsize=6, color="black" if light > 0.6 else "white")
    ax.set_title(f"{metric} by {kind}", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return _svg(fig)


def _cost_figure(flat: dict[str, dict], costs: dict[str, float], front: list[str], metric: str) -> str:
    have = [m for m in flat if m in costs and metric in flat[m]]
    fig = _figure(6.5, 4)
    ax = fig.add_subplot(1, 1, 1)
    for m in have:
        on = m in front
        ax.scatter(max(costs[m], 1e-3), flat[m][metric], s=40 if on else 20, color="#d62728" if on else "#1f77b4", zorder=3)
        ax.annotate(m, (max(costs[m], 1e-3), flat[m][metric]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    pts = sorted((max(costs[m], 1e-3), flat[m][metric]) for m in front if m in have)
    if len(pts) > 1:
        ax.plot(*zip(*pts, strict=True), color="#d62728", alpha=0.5, zorder=2)
    ax.set_xscale("log")
    ax.set_xlabel("seconds to fit and predict (log)", fontsize=8)
    ax.set_ylabel(metric, fontsize=8)
    ax.set_title("accuracy against cost (red: the Pareto front)", fontsize=9)
    ax.grid(alpha=0.3)
    return _svg(fig)


COST_COLUMNS = (
    ("stage_s", "stage s"), ("fit_s", "fit s"), ("predict_rows_per_s", "predict rows/s"),
    ("recommend_users_per_s", "recommend users/s"), ("recommend_s_per_1k_users", "s per 1K users"),
    ("peak_driver_python_mb", "driver Python MB"), ("peak_jvm_heap_mb", "JVM heap MB"),
    ("peak_python_workers_mb", "Python workers MB"), ("model_mb", "model MB"),
)  # fmt: skip


def _cost_table(costs: dict[str, dict[str, Any]], models: list[str]) -> str:
    """Seconds, throughput, peak memory and model size per model (the evaluate stage's ``costs``)."""
    have = [m for m in models if m in costs]
    if not have:
        return ""
    cols = [(k, h) for k, h in COST_COLUMNS if any(costs[m].get(k) is not None for m in have)]
    rows = [[m, *[costs[m].get(k) for k, _ in cols]] for m in have]
    return _table(["model", *[h for _, h in cols]], rows) + (
        "<p class='note'>Peak memory sampled while the fit that predicted test fitted, predicted and recommended; "
        "the blend: its members' seconds and sizes summed, their largest peaks.</p>"
    )


def _curves_figure(curves: dict[str, list[dict]]) -> str:
    fig = _figure(9, 3.2)
    ax = fig.add_subplot(1, 2, 1)
    ax2 = fig.add_subplot(1, 2, 2)
    for name, hist in curves.items():
        ep = [h.get("epoch", i) for i, h in enumerate(hist)]
        ax.plot(ep, [h.get("train_loss", np.nan) for h in hist], marker=".", label=name)
        valid = [k for k in hist[0] if k.startswith("valid_")]
        if valid:
            ax2.plot(ep, [h.get(valid[0], np.nan) for h in hist], marker=".", label=f"{name} ({valid[0][6:]})")
    ax.set_title("training loss by epoch", fontsize=9)
    ax2.set_title("validation metric by epoch", fontsize=9)
    for a in (ax, ax2):
        a.grid(alpha=0.3)
        a.set_xlabel("epoch", fontsize=8)
        if a.lines:
            a.legend(fontsize=7)
    return _svg(fig)


def _projection_figure(factors: np.ndarray, popularity: np.ndarray, name: str) -> str:
    x = factors - factors.mean(axis=0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    xy = x @ vt[:2].T
    share = (s[:2] ** 2).sum() / max((s**2).sum(), 1e-12)
    fig = _figure(5.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=np.log1p(popularity), s=6, cmap="plasma", alpha=0.8)
    fig.colorbar(sc, ax=ax, label="log(1 + training ratings)")
    ax.set_title(f"{name} item factors, first two principal components ({share:.0%} of the variance)", fontsize=9)
    return _svg(fig)


def dashboard(
    payload: dict[str, Any], seg_rows: list[dict], costs: dict[str, float] | None = None,
    curves: dict[str, list[dict]] | None = None, projection: tuple[str, np.ndarray, np.ndarray] | None = None,
    serving: dict[str, Any] | None = None,
) -> str:  # fmt: skip
    """The HTML page of one evaluate run (``payload``: its ``results.json``; ``seg_rows``: its ``segments`` rows;
    ``serving``: what ``benchmarks/serving.py`` measured on the published model, when it has been run)."""
    k = payload["k"]
    ndcg = f"ndcg@{k}"
    flat = {m: {c: v for c, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
            for m, r in payload["models"].items()}  # fmt: skip
    models = [m for m in payload.get("model_order", []) if m in flat] or list(flat)
    flat = {m: flat[m] for m in models}  # every table and figure in that order
    choice = payload.get("selection", {})
    parts = [f"<h1>Evaluation: {html.escape(str(payload['dataset']))}, split {html.escape(str(payload['split']))}</h1>"]
    best = payload["best_single"]
    parts.append(
        "<section id='summary'><h2>Summary</h2>"
        f"<p>{len(models)} models on the test part ({_num(flat['blend'].get('rows'))} ratings, {_num(flat['blend'].get('users'))} users); "
        f"blend: {html.escape(str(payload['blend'].get('chosen', '')))}. Best single model by {html.escape(best['metric'])}: "
        f"<b>{html.escape(best['model'])}</b>.</p>"
        f"<p><b>Selection.</b> {html.escape(choice.get('rationale') or choice.get('skipped') or 'not made')}</p></section>"
    )
    iv = payload.get("intervals", {})
    parts.append(
        "<section id='metrics'><h2>Metrics with intervals</h2>"
        + (f"<div class='fig'>{_intervals_figure(iv, models, ndcg)}</div>" if iv else "<p class='note'>No intervals in this report.</p>")
        + "</section>"
    )
    cols = [c for c in ("rmse", "mae", ndcg, f"precision@{k}", f"recall@{k}", f"hr@{k}", f"mrr@{k}", "coverage", "novelty", "diversity",
                        "gini", "avg_popularity", f"serendipity@{k}") if any(c in r for r in flat.values())]  # fmt: skip
    basis = payload["models"]["blend"].get("diversity_basis", "genres")
    parts.append(
        "<section id='table'><h2>Every metric</h2>"
        + _table(["model", *cols], [[m, *[flat[m].get(c) for c in cols]] for m in models])
        + f"<p class='note'>Diversity from {html.escape(basis)}; "
        f"serendipity: relevant and outside the {k} most rated items.</p></section>"
    )
    sig_rows = []
    for metric, s in payload.get("significance", {}).items():
        for r in s["rows"]:
            p = max(r["t_p_holm"], r["wilcoxon_p_holm"])
            interval = f"{r['diff']:+.4f} [{r['ci95_lo']:+.4f}, {r['ci95_hi']:+.4f}]"
            yes = "yes" if p < 0.05 else "no"
            sig_rows.append([metric, r["reference"], r["model"], interval, f"{r['t_p_holm']:.3g}", f"{r['wilcoxon_p_holm']:.3g}", yes])
    parts.append(
        "<section id='significance'><h2>Paired comparisons</h2>"
        + _table(["metric", "reference", "model", "difference (95% CI)", "t-test p (Holm)", "Wilcoxon p (Holm)", "significant"], sig_rows)
        + "<p class='note'>Positive differences favour the reference.</p></section>"
    )
    parts.append(
        "<section id='segments'><h2>By segment</h2>"
        f"<div class='fig'>{_heatmap(seg_rows, models, 'user activity', ndcg)}</div>"
        f"<div class='fig'>{_heatmap(seg_rows, models, 'item popularity', 'rmse')}</div></section>"
    )
    front = choice.get("pareto_front", []) if isinstance(choice.get("pareto_front"), list) else []
    metric = choice.get("metric", ndcg) if choice.get("metric") in flat.get("blend", {}) else ndcg
    parts.append(
        "<section id='cost'><h2>Accuracy against cost</h2>"
        + (f"<div class='fig'>{_cost_figure(flat, costs, front, metric)}</div>" if costs else "<p class='note'>No cost figures.</p>")
        + _cost_table(payload.get("costs") or {}, models)
        + "</section>"
    )
    parts.append(
        "<section id='curves'><h2>Learning curves</h2>"
        + (f"<div class='fig'>{_curves_figure(curves)}</div>" if curves
           else "<p class='note'>No model in this run records per-epoch losses.</p>")
        + "</section>"
    )
    if projection is not None:
        name, factors, pop = projection
        proj = f"<div class='fig'>{_projection_figure(factors, pop, name)}</div>"
    else:
        proj = "<p class='note'>No factorize stage in this run (set factorize.model to project a model's item factors).</p>"
    parts.append(f"<section id='projection'><h2>Item factors</h2>{proj}</section>")
    parts.append(f"<section id='serving'><h2>Serving</h2>{_serving_section(serving)}</section>")
    title = f"recsys-spark: {html.escape(str(payload['dataset']))}"
    return f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title><style>{_CSS}</style></head><body>" + "".join(
        parts
    ) + "</body></html>\n"


def _serving_section(serving: dict[str, Any] | None) -> str:
    """Single-request latency over HTTP and the Spark UDF's batch throughput (``benchmarks/serving.py``'s JSON)."""
    if not serving:
        return ("<p class='note'>No serving measurement for this run: publish the model, run "
                "<code>benchmarks/serving.py</code>, then <code>recsys-spark report</code>.</p>")  # fmt: skip
    h = serving.get("http", {})
    kinds = (("known user", h.get("known_ms") or {}), ("unknown user (cold start)", h.get("unknown_ms") or {}))
    rows = [[kind, *[_plain(p.get(c)) for c in ("n", "p50", "p90", "p99", "max")]] for kind, p in kinds if p]
    b = serving.get("batch_udf") or {}
    batch = ""
    if b:
        batch = (f"<p>Batch scoring with <code>mlflow.pyfunc.spark_udf</code> on {_plain(b.get('master'))}: "
                 f"{_plain(b.get('users'))} users in {_plain(b.get('wall_s'))} s ({_plain(b.get('users_per_s'))} users/s); "
                 f"{_plain(b.get('lists_equal_to_final'))} of {_plain(b.get('final_users'))} lists equal to the final table's.</p>")
    return (
        f"<p>{html.escape(str(serving.get('model_uri', '')))}, {html.escape(str(h.get('server', '')))}: "
        f"single-user requests one after another; {_plain(h.get('wrong_answers'))} wrong answers.</p>"
        + _table(["request", "n", "p50 ms", "p90 ms", "p99 ms", "max ms"], rows) + batch
    )


def _plain(v: Any) -> str:
    return "" if v is None else html.escape(str(v))


def _interval_panel(intervals: dict[str, list[float]], order: list[str], metric: str) -> str:
    fig = _figure(7, max(2.2, 0.28 * len(order) + 1))
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(order))
    v = np.array([intervals[m] for m in order])
    ax.errorbar(v[:, 0], y, xerr=[v[:, 0] - v[:, 1], v[:, 2] - v[:, 0]], fmt="o", capsize=3, color="#1f77b4")
    ax.set_yticks(y, order, fontsize=8)
    ax.invert_yaxis()
    ax.set_title(f"{metric} (95% bootstrap interval)", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig)


def suite_page(payload: dict[str, Any]) -> str:
    """The HTML page of ``recsys-spark report --suite`` (:mod:`recsys_spark.suite`): one section per table."""
    from recsys_spark.suite import columns

    k = payload["k"]
    parts = [
        "<h1>recsys-spark: every model on every protocol</h1>",
        f"<p class='note'>k = {k}. Intervals: bootstrap 95% over users. p-values: paired t-test and Wilcoxon, "
        "Holm-adjusted over each table's comparisons with the best model and the selected one.</p>",
    ]
    for i, t in enumerate(payload["tables"]):
        metric = t["metric"]
        order = sorted(t["models"], key=lambda m: t["models"][m][metric], reverse=metric != "rmse")
        cols = [c for c in columns(t, k) if c != metric]
        vs = {r["model"]: r for r in t["comparisons"] if r["reference"] == t["best"]}
        rows = []
        for m in order:
            v, lo, hi = t["intervals"][m]
            r = vs.get(m)
            rows.append([
                m, f"{v:.4f} [{lo:.4f}, {hi:.4f}]", *[t["models"][m].get(c) for c in cols],
                f"{r['diff']:+.4f} [{r['ci95_lo']:+.4f}, {r['ci95_hi']:+.4f}]" if r else "",
                f"{r['t_p_holm']:.2g} / {r['wilcoxon_p_holm']:.2g}" if r else "",
            ])  # fmt: skip
        header = ["model", f"{metric} (95% CI)", *cols, f"vs {t['best']}", "Holm p (t / W)"]
        parts.append(
            f"<section id='t{i}'><h2>{html.escape(t['dataset'])}, {html.escape(t['protocol'])}</h2>"
            f"<p>{len(order)} models, {t['n']} {html.escape(t['units'])}. {html.escape(t['rationale'])}</p>"
            f"<div class='fig'>{_interval_panel(t['intervals'], order, metric)}</div>"
            + _table(header, rows) + "</section>"
        )
    if payload.get("not_run"):
        parts.append(f"<section id='not-run'><h2>Not run</h2><p>{html.escape(', '.join(payload['not_run']))}</p></section>")
    if payload.get("failed"):
        items = "".join(f"<li>{html.escape(c)}: {html.escape(w)}</li>" for c, w in payload["failed"].items())
        parts.append(f"<section id='failed'><h2>Failed</h2><ul>{items}</ul></section>")
    return "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>recsys-spark suite</title>" + (
        f"<style>{_CSS}</style></head><body>" + "".join(parts) + "</body></html>\n"
    )
