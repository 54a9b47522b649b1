"""Evaluation of predictions in the contract shapes, and the results table.

:func:`topn_report` and :func:`rating_report` turn one model's outputs into a
flat dict of metrics (see :mod:`recsys_spark.metrics` for the definitions);
:func:`results_markdown` renders a table of several models.  Pure functions
over DataFrames: the stages and the benchmark command both call them.
"""

from __future__ import annotations

from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_spark import metrics as M

FALLBACK_SOURCES = ("global_mean", "user_bias", "item_bias")
LOWER_IS_BETTER = ("rmse", "mae")


def rating_report(predictions: DataFrame, truth: DataFrame, primary_is_fallback: bool = False) -> dict[str, Any]:
    m = M.rating_metrics(predictions, truth)
    sources = m.get("sources", {})
    fallback = 0 if primary_is_fallback else sum(v for s, v in sources.items() if s in FALLBACK_SOURCES)
    return {"rmse": m["rmse"], "mae": m["mae"], "rows": m["n"], "fallback_rows": fallback, "sources": sources}


def topn_report(
    topn: DataFrame, truth: DataFrame, train: DataFrame, items: DataFrame, n_catalog: int, k: int,
    relevance_threshold: float | None = None, per_user: list[DataFrame] | None = None, name: str = "",
    business: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Ranking and beyond-accuracy metrics; with ``per_user`` (a list), the per-user
    metric values, tagged with ``model = name``, are appended to it (lazily).

    With ``business``, also ``gini``, ``avg_popularity`` and ``serendipity@k``,
    and diversity from co-occurrence where the items have no features
    (``diversity_basis`` says which); a few more Spark jobs per call.
    """
    r = M.ranking_metrics(topn, truth, k, relevance_threshold)
    if per_user is not None:
        per_user.append(r.per_user.withColumn("model", F.lit(name)))
    out = {key: r.metrics[key] for key in (f"precision@{k}", f"recall@{k}", f"ndcg@{k}", f"map@{k}", f"hr@{k}", f"mrr@{k}")}
    out["ndcg_graded"] = r.metrics[f"ndcg_graded@{k}"]
    out["users"] = r.metrics["users"]
    out["coverage"] = M.coverage(topn, n_catalog)
    out["novelty"] = M.novelty(topn, train)
    if not business:
        out["diversity"] = M.diversity(topn, items)
        return out
    if M.has_features(items):
        out["diversity"], out["diversity_basis"] = M.diversity(topn, items), "genres"
    else:  # no item features: distances from who rated the items
        out["diversity"], out["diversity_basis"] = M.cooccurrence_diversity(topn, train), "co-occurrence"
    out.update(M.popularity_stats(topn, train, n_catalog))
    rel = truth if relevance_threshold is None else truth.where(F.col(M.COL_RATING) >= relevance_threshold)
    out[f"serendipity@{k}"] = M.serendipity(topn, rel, train, k, int(r.metrics["users"]))
    return out


def better(metric: str, a: float, b: float) -> bool:
    """Is ``a`` better than ``b`` for ``metric``?"""
    return a < b if metric in LOWER_IS_BETTER else a > b


def results_markdown(rows: dict[str, dict[str, Any]], k: int) -> str:
    cols = [
        "rmse",
        "mae",
        f"precision@{k}",
        f"recall@{k}",
        f"ndcg@{k}",
        f"map@{k}",
        f"hr@{k}",
        f"mrr@{k}",
        "coverage",
        "novelty",
        "diversity",
        "gini",
        "avg_popularity",
        f"serendipity@{k}",
    ]
    lines = ["| model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, m in rows.items():
        cells = [f"{m[c]:.4f}" if isinstance(m.get(c), (int, float)) else "" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
