"""The next-item protocol and its first baseline, the last-item co-occurrence model.

    recsys-spark benchmark nextitem --dataset ml-100k --models last_item,popularity,ease

**Protocol** (:func:`run_nextitem`): each user's ratings in time order (ties
by the larger ``item_idx`` last, as :func:`recsys_spark.split.leave_last_out`
orders them); the latest is the test target, the one before it the
validation target, everything earlier training.  Users with fewer than three
ratings have no validation target; with fewer than two, no test target (they
stay in training).  Every model is fitted twice: on training, ranked against
the validation targets (what a default is chosen on), and on training plus
validation, ranked against the test targets.  The ranking is *full*: every
item the user has not rated in what the model was fitted on is a candidate
(no sampled negatives).  Metrics per user, one relevant item: HR@k (the
target is in the list), NDCG@k (``1 / log2(1 + rank)``), MRR@k (``1 / rank``);
the table reports their means over users with a target.

**LastItem** (``last_item``): the items that followed the user's latest
training item in other users' histories, by how often.  Fitting counts the
ordered pairs ``(a, b)`` where ``b`` came within ``window`` ratings after
``a`` in one user's history (the user's own pairs count too: a history is
evidence of what follows what), keeping each ``a``'s ``max_next`` most
frequent successors.  Ratings with the same timestamp have no order between
them: such a pair counts both ways, and every item of the user's latest
second is a "latest item".  (Half the consecutive ratings of ML-100K share
their second; with the protocol's tie rule, by item index, a model that
read the tie order would learn the rule, not the users.)  A list is the
successors of the user's latest items minus the items the user rated, then the popularity list (by rating count)
to fill it to ``k``; the scores tell the two apart: a successor scores its
count (>= 1), the popularity fill scores in (0, 1).  A user with no training
rating gets the popularity list.  Rating predictions are the popularity model's damped item
means (``source="popularity"``): this is a top-N model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import pandas as pd
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from recsys_spark.baselines import BiasTableModel, Popularity, PopularityRatings
from recsys_spark.recommender import Recommender, RecommenderModel, Scale, as_topn, materialize, release
from recsys_spark.schemas import COL_ITEM, COL_RANK, COL_RATING, COL_SCORE, COL_TIMESTAMP, COL_USER, require_columns
from recsys_spark.split import COL_PART, TEST, TRAIN, VALID, leave_last_out

log = logging.getLogger(__name__)

NEXTITEM_PROTOCOL = {"split": "leave-last-out", "targets": "latest rating (test), the one before (validation)",
                     "candidates": "every item the user has not rated (full ranking)"}  # fmt: skip
COL_A, COL_B, COL_N = "a", "b", "n"


def _history_order() -> list:
    return [F.col(COL_TIMESTAMP).asc(), F.col(COL_ITEM).asc()]  # the reverse of leave_last_out's "latest first"


class LastItemModel(PopularityRatings, RecommenderModel):
    """Successor counts of each item and every training user's latest item (see the module docstring)."""

    STATE_KEYS: ClassVar[tuple[str, ...]] = ("next", "last", "user_bias", "item_bias", "item_score", "seen")

    def __init__(self, name: str, info: dict[str, Any], nxt: DataFrame, last: DataFrame, fallback: BiasTableModel) -> None:
        self.name = name
        self.info = info
        self.next = nxt  # (a, b, n): b followed a n times, each a's max_next most frequent
        self.last = last  # (user_idx, item_idx): the user's latest training item
        self.fallback = fallback  # popularity by count: the fill, cold users and the rating predictions

    def recommend(self, users: DataFrame, k: int = 10) -> DataFrame:
        want = users.select(COL_USER).distinct()
        follow = (
            want.join(self.last, COL_USER)
            .join(self.next, F.col(COL_ITEM) == F.col(COL_A))
            .select(COL_USER, F.col(COL_B).alias(COL_ITEM), F.col(COL_N).cast("double").alias(COL_SCORE))
            .join(self.fallback.seen, [COL_USER, COL_ITEM], "left_anti")
        )
        fill = self.fallback.recommend(want, k).select(COL_USER, COL_ITEM, (1.0 - F.col(COL_RANK) / (k + 1.0)).alias(COL_SCORE))
        cand = follow.unionByName(fill).groupBy(COL_USER, COL_ITEM).agg(F.max(COL_SCORE).alias(COL_SCORE))
        w = Window.partitionBy(COL_USER).orderBy(F.desc(COL_SCORE), F.asc(COL_ITEM))
        return as_topn(cand.withColumn(COL_RANK, F.row_number().over(w)).where(F.col(COL_RANK) <= k), self.name)

    def _state(self) -> dict[str, DataFrame]:
        return {"next": self.next, "last": self.last, **self.fallback._state()}

    def _params(self) -> dict[str, Any]:
        return {"name": self.name, "info": self.info, "fallback": self.fallback._params()}

    @classmethod
    def _from_state(cls, params: dict[str, Any], state: dict[str, DataFrame]) -> LastItemModel:
        fallback = BiasTableModel._from_state(params["fallback"], state)
        return cls(params["name"], params["info"], state["next"], state["last"], fallback)


@dataclass
class LastItem(Recommender):
    """What followed the user's latest item in the training histories (see the module docstring)."""

    window: int = 1  # b counts as following a when it came at most this many ratings later
    max_next: int = 200  # successors kept per item
    scale: Scale = None  # type: ignore[assignment]
    name: str = "last_item"

    def fit(self, train: DataFrame) -> LastItemModel:
        self._check_train(train)
        require_columns(train, [COL_TIMESTAMP], "last_item training data (histories need their order)")
        if self.window < 1 or self.max_next < 1:
            raise ValueError(f"{self.name}: window and max_next must be >= 1, got {self.window}, {self.max_next}")
        if train.limit(1).count() == 0:
            raise ValueError(f"{self.name}: the training data is empty")
        t0 = time.perf_counter()
        w = Window.partitionBy(COL_USER).orderBy(*_history_order())
        hist = train.select(COL_USER, COL_ITEM, COL_TIMESTAMP).withColumn("_pos", F.row_number().over(w))
        nxt = hist.select(COL_USER, "_pos", F.col(COL_ITEM).alias(COL_B), F.col(COL_TIMESTAMP).alias("_tb"))
        gap = F.col("_pos") - F.col("_pa")
        pairs = (
            hist.select(COL_USER, F.col("_pos").alias("_pa"), F.col(COL_ITEM).alias(COL_A), F.col(COL_TIMESTAMP).alias("_ta"))
            .join(nxt, COL_USER)
            # b after a, or rated in the same second as a (no order between them: both ways)
            .where(((gap > 0) & (gap <= self.window)) | ((F.col("_tb") == F.col("_ta")) & (gap < 0) & (gap >= -self.window)))
        )
        counts = pairs.groupBy(COL_A, COL_B).agg(F.count(F.lit(1)).alias(COL_N))
        top = Window.partitionBy(COL_A).orderBy(F.desc(COL_N), F.asc(COL_B))
        kept = counts.withColumn("_r", F.row_number().over(top)).where(F.col("_r") <= self.max_next).drop("_r")
        latest = F.max(COL_TIMESTAMP).over(Window.partitionBy(COL_USER))  # every item of the user's latest second
        last = train.select(COL_USER, COL_ITEM, COL_TIMESTAMP).withColumn("_latest", latest).where(F.col(COL_TIMESTAMP) == F.col("_latest"))
        fallback = Popularity(kind="count", scale=self.scale or Scale(), name=self.name).fit(train)
        info = {"window": self.window, "max_next": self.max_next, "fit_s": round(time.perf_counter() - t0, 3)}
        return LastItemModel(self.name, info, kept, last.select(COL_USER, COL_ITEM), fallback)


# -- the protocol --------------------------------------------------------------------------------
def nextitem_parts(ratings: DataFrame) -> dict[str, DataFrame]:
    """``train`` / ``valid`` / ``test`` of the protocol: latest rating test, the one before valid."""
    labelled = leave_last_out(ratings, with_valid=True)  # the caller caches the parts it reads more than once
    return {p: labelled.where(F.col(COL_PART) == p).drop(COL_PART) for p in (TRAIN, VALID, TEST)}


def target_metrics(top: DataFrame, targets: DataFrame, k: int) -> DataFrame:
    """Per target user: ``hr@k``, ``ndcg@k``, ``mrr@k`` of its one target item (0 when it is not in the list)."""
    hit = targets.select(COL_USER, COL_ITEM).join(top.select(COL_USER, COL_ITEM, COL_RANK).where(F.col(COL_RANK) <= k),
                                                  [COL_USER, COL_ITEM], "left")  # fmt: skip
    r = F.col(COL_RANK)
    return hit.select(
        COL_USER,
        F.when(r.isNotNull(), 1.0).otherwise(0.0).alias(f"hr@{k}"),
        F.when(r.isNotNull(), 1.0 / F.log2(r + 1.0)).otherwise(0.0).alias(f"ndcg@{k}"),
        F.when(r.isNotNull(), 1.0 / r).otherwise(0.0).alias(f"mrr@{k}"),
    )


GAP_BUCKETS = [(0, "same second"), (3600, "< 1 hour"), (86400, "< 1 day"), (7 * 86400, "< 1 week"), (30 * 86400, "< 30 days"),
               (365 * 86400, "< 1 year"), (float("inf"), ">= 1 year")]  # fmt: skip
WEEKDAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]


def target_context(fit_on: DataFrame, targets: DataFrame) -> pd.DataFrame:
    """Per target user: ``history`` (ratings fitted on), ``gap_s`` (target time minus the latest fitted rating's),
    ``hour`` and ``weekday`` (UTC, Monday 0) of the target.  One row per target user (collected)."""
    hist = fit_on.groupBy(COL_USER).agg(F.count("*").alias("history"), F.max(COL_TIMESTAMP).alias("_prev"))
    ts = F.col(COL_TIMESTAMP)
    df = targets.select(COL_USER, ts).join(hist, COL_USER, "left").select(
        COL_USER,
        F.coalesce(F.col("history"), F.lit(0)).alias("history"),
        (ts - F.col("_prev")).alias("gap_s"),
        F.floor(F.pmod(ts, F.lit(86400)) / 3600).cast("int").alias("hour"),
        F.pmod(F.floor(ts / 86400) + 3, F.lit(7)).cast("int").alias("weekday"),  # 1970-01-01 was a Thursday
    )
    return df.toPandas().set_index(COL_USER).sort_index()


def temporal_breakdown(context: pd.DataFrame, per_user: dict[str, pd.DataFrame], k: int) -> dict[str, Any]:
    """Each model's mean HR@k / NDCG@k over target users grouped by history-length decile, gap since the
    previous rating, hour and weekday of the target (the temporal pattern analysis; counts per group)."""
    import numpy as np

    ctx = context.copy()
    ctx["history_decile"] = pd.qcut(ctx["history"].rank(method="first"), 10, labels=False) if len(ctx) >= 10 else 0
    bounds = [b for b, _ in GAP_BUCKETS]
    gap = ctx["gap_s"].fillna(-1).to_numpy()
    ctx["gap"] = np.where(gap < 0, -1, np.searchsorted(bounds, gap, side="left"))
    out: dict[str, Any] = {"k": k, "by": {}}
    labels = {
        "history_decile": lambda g: f"{int(ctx.loc[ctx['history_decile'] == g, 'history'].min())}-"
                                    f"{int(ctx.loc[ctx['history_decile'] == g, 'history'].max())} ratings",
        "gap": lambda g: "unknown" if g < 0 else GAP_BUCKETS[int(g)][1],
        "hour": lambda g: f"{int(g):02d}h",
        "weekday": lambda g: WEEKDAYS[int(g)],
    }  # fmt: skip
    for by, label in labels.items():
        rows = []
        for g, members in ctx.groupby(by).groups.items():
            row = {"segment": label(g), "users": int(len(members))}
            for name, pu in per_user.items():
                vals = pu.reindex(members).fillna(0.0)  # a target user the model gave no list scores 0
                row[name] = {f"hr@{k}": round(float(vals[f"hr@{k}"].mean()), 6), f"ndcg@{k}": round(float(vals[f"ndcg@{k}"].mean()), 6)}
            rows.append(row)
        out["by"][by] = rows
    return out


def plot_temporal(temporal: dict[str, Any], path: str, title: str = "next-item accuracy over time") -> str:
    """A PNG at ``path`` (on this machine): NDCG@k by segment, one panel per grouping, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = temporal["k"]
    panels = list(temporal["by"].items())
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    for ax, (by, rows) in zip(axes[0], panels, strict=True):
        models = [m for m in rows[0] if m not in ("segment", "users")] if rows else []
        x = range(len(rows))
        for m in models:
            ax.plot(x, [r[m][f"ndcg@{k}"] for r in rows], marker="o", ms=3, label=m)
        ax.set_xticks(list(x), [r["segment"] for r in rows], rotation=60, ha="right", fontsize=7)
        ax.set_title(by.replace("_", " "))
        ax.set_ylabel(f"NDCG@{k}")
    if panels and panels[0][1]:
        axes[0][0].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_nextitem(
    spark: SparkSession, cfg: Any, models: list[str], k: int = 10, per_user: dict[str, pd.DataFrame] | None = None,
    parts: tuple[str, ...] = ("valid", "test"), reference: str = "last_item",
) -> dict[str, Any]:  # fmt: skip
    """Every model of ``models`` on the next-item protocol of ``cfg``'s dataset (see the module docstring).

    ``per_user`` (a dict) receives each model's per-user test values (a pandas frame by user).  With
    the test part run and ``reference`` among ``models``, ``paired`` compares every other model with
    it on the per-user NDCG@k (:func:`recsys_spark.significance.compare_all`: bootstrap 95% interval
    of ``reference - model``, paired t and Wilcoxon p-values, Holm-adjusted).
    """
    from recsys_spark import registry, significance, stages

    per_user = per_user if per_user is not None else {}

    stages.run_ingest(spark, cfg)
    ratings = stages.read_ingested(spark, cfg)
    require_columns(ratings, [COL_TIMESTAMP], f"{cfg.dataset_name}: the next-item protocol needs timestamps")
    p = nextitem_parts(ratings.select(COL_USER, COL_ITEM, COL_RATING, COL_TIMESTAMP))
    train, valid, test = p[TRAIN].persist(), p[VALID].persist(), p[TEST].persist()
    fits = {"valid": (train, valid), "test": (train.unionByName(valid).persist(), test)}
    scale = stages.rating_scale(spark, cfg)
    side = stages.side_data(spark, cfg)
    out: dict[str, Any] = {
        "protocol": {"name": "nextitem", "dataset": cfg.dataset_name, "k": k, **NEXTITEM_PROTOCOL,
                     "train_rows": train.count(), "valid_users": valid.count(), "test_users": test.count(),
                     "items": ratings.select(COL_ITEM).distinct().count()},
        "models": {},
    }  # fmt: skip
    for name in models:
        if name not in registry.REGISTRY:
            raise ValueError(f"unknown model {name!r}; registered: {', '.join(registry.REGISTRY)}")
        row: dict[str, Any] = {}
        for part in parts:
            fit_on, targets = fits[part]
            t = time.perf_counter()
            model = materialize(registry.build(name, scale, models_dir=stages.models_dir_of(cfg)).fit_with(fit_on, side))
            fit_s = time.perf_counter() - t
            t = time.perf_counter()
            top = model.recommend(targets.select(COL_USER), k).persist()
            top.count()
            rec_s = time.perf_counter() - t
            pu = target_metrics(top, targets, k).toPandas().set_index(COL_USER).sort_index()  # one row per target user
            top.unpersist()
            release(model)
            suffix = "" if part == "test" else "_valid"
            row.update({f"{m}{suffix}": float(pu[m].mean()) if len(pu) else 0.0 for m in pu.columns})
            row.update({f"fit_s{suffix}": round(fit_s, 3), f"recommend_s{suffix}": round(rec_s, 3)})
            if part == "test":
                per_user[name] = pu
        out["models"][name] = row
        log.info("nextitem %s: %s", name, {m: round(v, 4) for m, v in row.items() if "@" in m})
    if "test" in parts and per_user:
        out["temporal"] = temporal_breakdown(target_context(fits["test"][0], test), per_user, k)
    for df in (train, valid, test, fits["test"][0]):
        df.unpersist()
    if reference in per_user and len(per_user) > 1:
        users = per_user[reference].index
        values = {m: pu.reindex(users)[f"ndcg@{k}"].fillna(0.0).to_numpy() for m, pu in per_user.items()}
        out["paired"] = {"metric": f"ndcg@{k}", "diff": f"{reference} - model",
                         "rows": significance.compare_all(values, [reference])}  # fmt: skip
    return out


def summary_table(result: dict[str, Any]) -> str:
    k = result["protocol"]["k"]
    cols = [f"hr@{k}", f"ndcg@{k}", f"mrr@{k}", f"ndcg@{k}_valid"]
    lines = ["| model | " + " | ".join(cols) + " | fit s | recommend s |", "|---|" + "---:|" * (len(cols) + 2)]
    for name, m in result["models"].items():
        vals = [f"{m[c]:.4f}" if c in m else "" for c in cols]
        lines.append(f"| {name} | " + " | ".join(vals) + f" | {m.get('fit_s', 0):.1f} | {m.get('recommend_s', 0):.1f} |")
    paired = result.get("paired")
    if paired:
        lines += ["", f"Paired {paired['metric']} ({paired['diff']}; bootstrap 95% interval over users, Holm-adjusted p):", "",
                  "| model | diff | 95% interval | t p (Holm) | Wilcoxon p (Holm) |", "|---|---:|---:|---:|---:|"]  # fmt: skip
        for r in paired["rows"]:
            lines.append(f"| {r['model']} | {r['diff']:+.4f} | [{r['ci95_lo']:+.4f}, {r['ci95_hi']:+.4f}] | {r['t_p_holm']:.2g} | "
                         f"{r['wilcoxon_p_holm']:.2g} |")  # fmt: skip
    return "\n".join(lines)
