"""Top-N rank fusion (reciprocal rank, Borda) and the greedy choice of members on validation NDCG."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from recsys_spark.blend.level1 import BlendError
from recsys_spark.schemas import COL_ITEM, COL_RANK, COL_SCORE, COL_USER

log = logging.getLogger(__name__)


TOPN_METHODS = ("rrf", "borda")
RRF_K = 60


def _weight(method: str, rank: np.ndarray | Column, k: int) -> Any:
    if method == "rrf":
        return 1.0 / (RRF_K + rank)
    if method == "borda":
        return k + 1 - rank
    raise BlendError(f"unknown top-N blend {method!r}; use one of {', '.join(TOPN_METHODS)}")


def fuse(
    lists: Mapping[str, DataFrame], method: str, k: int, weights: Mapping[str, float] | None = None, detailed: bool = False,
) -> DataFrame:  # fmt: skip
    """Fused top-``k`` per user from the members' ranked lists (``user_idx, item_idx, rank``).

    ``score`` is the weighted fusion score; ``contributors`` the members whose
    list held the item, best-ranked first; ties broken by item index.  With
    ``detailed``, each contributor is ``{model, weight, rank}`` (its share of
    the item's score and its rank there), the largest share first.
    """
    parts = [
        df.select(COL_USER, COL_ITEM, F.col(COL_RANK).cast("double").alias("_r"), F.lit(name).alias("_m"))
        .withColumn("_w", F.lit(float((weights or {}).get(name, 1.0))) * _weight(method, F.col("_r"), k))
        for name, df in lists.items()
    ]
    union = parts[0]
    for p in parts[1:]:
        union = union.unionByName(p)
    agg = union.groupBy(COL_USER, COL_ITEM).agg(F.sum("_w").alias(COL_SCORE), F.collect_list(F.struct("_r", "_m", "_w")).alias("_c"))
    if detailed:  # by share, the largest first (negated for the ascending sort), then rank
        order = F.transform("_c", lambda s: F.struct((-s["_w"]).alias("nw"), s["_r"].alias("r"), s["_m"].alias("m")))
        shares = lambda s: F.struct(  # noqa: E731
            s["m"].alias("model"), (-s["nw"] / F.col(COL_SCORE)).alias("weight"), s["r"].cast("int").alias("rank")
        )
        contributors = F.transform(F.array_sort(order), shares)
    else:
        order = F.transform("_c", lambda s: F.struct(s["_r"].alias("r"), s["_m"].alias("m")))
        contributors = F.transform(F.array_sort(order), lambda s: s["m"])
    w = Window.partitionBy(COL_USER).orderBy(F.desc(COL_SCORE), F.asc(COL_ITEM))
    return (
        agg.withColumn("contributors", contributors)
        .drop("_c")
        .withColumn(COL_RANK, F.row_number().over(w))
        .where(F.col(COL_RANK) <= k)
    )


def _ndcg_np(lists: dict[str, pd.DataFrame], relevant: dict[int, set[int]], members: Sequence[str], method: str, k: int) -> float:
    """Mean NDCG@k over the users of ``relevant`` of the fusion of ``members`` (binary relevance)."""
    frames = [lists[m].assign(_w=_weight(method, lists[m][COL_RANK].to_numpy(np.float64), k)) for m in members]
    u = pd.concat(frames, ignore_index=True).groupby([COL_USER, COL_ITEM], sort=False)["_w"].sum().reset_index()
    u = u.sort_values([COL_USER, "_w", COL_ITEM], ascending=[True, False, True])
    u["_rank"] = u.groupby(COL_USER).cumcount() + 1
    u = u[u["_rank"] <= k]
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    total = 0.0
    got = {user: grp for user, grp in u.groupby(COL_USER)}
    for user, rel in relevant.items():
        ideal = disc[: min(len(rel), k)].sum()
        grp = got.get(user)
        if grp is None or ideal == 0:
            continue
        hits = np.fromiter((i in rel for i in grp[COL_ITEM].to_numpy()), bool, len(grp))
        total += disc[grp["_rank"].to_numpy()[hits] - 1].sum() / ideal
    return total / max(1, len(relevant))


def select_fusion(
    lists: dict[str, pd.DataFrame], relevant: dict[int, set[int]], k: int, max_members: int = 4,
) -> dict[str, Any]:  # fmt: skip
    """Greedy forward selection of members for each fusion method by validation NDCG@k.

    Starts from the best single member and adds the member that raises NDCG
    most, while it does (at most ``max_members``).  Returns every method's path
    and the best (method, members) overall; a single member is also a candidate.
    """
    singles = {m: _ndcg_np(lists, relevant, [m], "rrf", k) for m in lists}
    best_single = max(singles, key=lambda m: (singles[m], m))
    out: dict[str, Any] = {"singles": singles, "methods": {}}
    best = ("single", [best_single], singles[best_single])
    for method in TOPN_METHODS:
        chosen, score = [best_single], singles[best_single]
        path = [(list(chosen), score)]
        while len(chosen) < max_members:
            trials = {m: _ndcg_np(lists, relevant, [*chosen, m], method, k) for m in lists if m not in chosen}
            if not trials:
                break
            m, s = max(trials.items(), key=lambda kv: (kv[1], kv[0]))
            if s <= score:
                break
            chosen, score = [*chosen, m], s
            path.append((list(chosen), score))
        out["methods"][method] = {"members": chosen, "ndcg": score, "path": path}
        if score > best[2]:
            best = (method, chosen, score)
    out["chosen"] = {"method": best[0], "members": best[1], "ndcg": best[2]}
    return out
