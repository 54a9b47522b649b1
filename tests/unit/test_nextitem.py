"""The next-item protocol and the last-item co-occurrence model: lists and metrics by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recsys_spark.nextitem import LastItem, nextitem_parts, run_nextitem, target_metrics
from recsys_spark.recommender import Scale
from recsys_spark.schemas import RATINGS_SCHEMA
from tests.contract.model_contract import ClassScopedContract

# (user, item, rating, timestamp): histories in time order
HISTORIES = {0: [1, 2, 3], 1: [1, 2], 2: [1, 3], 3: [4, 1], 4: [1, 5, 3]}


def _ratings(spark):
    rows = [(u, i, 4.0, t) for u, items in HISTORIES.items() for t, i in enumerate(items, 1)]
    return spark.createDataFrame(rows, RATINGS_SCHEMA)


class TestLastItemContract(ClassScopedContract):
    def make(self):
        return LastItem(window=1, max_next=10, scale=self.scale)


def _lists(model, spark, users, k):
    out: dict[int, list[tuple[int, float]]] = {}
    frame = spark.createDataFrame([(u,) for u in users], "user_idx int")
    for r in model.recommend(frame, k).orderBy("user_idx", "rank").collect():
        out.setdefault(r["user_idx"], []).append((r["item_idx"], r["score"]))
    return out


def test_successors_of_the_latest_item_by_hand_then_the_popularity_fill(spark):
    ratings = _ratings(spark)
    # window 1: after item 1 came 2 (users 0, 1), 3 (user 2), 5 (user 4); user 3's latest item is 1, it rated 4 and 1
    one = LastItem(window=1, max_next=200, scale=Scale()).fit(ratings)
    assert _lists(one, spark, [3], 3) == {3: [(2, 2.0), (3, 1.0), (5, 1.0)]}  # the tie 3 / 5: the smaller id first
    # window 2: user 0's 1 -> 3 and user 4's 1 -> 3 count as well: 3 followed 1 three times
    two = LastItem(window=2, max_next=200, scale=Scale()).fit(ratings)
    assert _lists(two, spark, [3], 3) == {3: [(3, 3.0), (2, 2.0), (5, 1.0)]}
    # one successor kept: 2, then the popularity order of the unrated items (3 rated by 3 users, 5 by 1), scored below 1
    pruned = _lists(LastItem(window=1, max_next=1, scale=Scale()).fit(ratings), spark, [3], 3)[3]
    assert [i for i, _ in pruned] == [2, 3, 5] and pruned[0][1] == 2.0 and all(0 < s < 1 for _, s in pruned[1:])
    # a user with no rating: the popularity list (item 1 rated 5 times, 3 three times, 2 twice)
    assert [i for i, _ in _lists(one, spark, [99], 3)[99]] == [1, 3, 2]
    # ratings in the same second have no order: user 5 rated 6 and 7 together, so each counts as following the other
    tied = ratings.unionByName(spark.createDataFrame([(5, 6, 4.0, 9), (5, 7, 4.0, 9), (6, 6, 4.0, 1)], RATINGS_SCHEMA))
    both = LastItem(window=1, max_next=200, scale=Scale()).fit(tied)
    assert _lists(both, spark, [6], 1) == {6: [(7, 1.0)]}  # user 6's latest item is 6: 7 followed it (in the same second)
    assert sorted(r["item_idx"] for r in both.last.where("user_idx = 5").collect()) == [6, 7]  # both are user 5's latest
    with pytest.raises(ValueError, match="window and max_next"):
        LastItem(window=0).fit(ratings)


def test_the_parts_put_the_latest_rating_in_test_and_the_one_before_in_valid(spark):
    p = {name: sorted((r["user_idx"], r["item_idx"]) for r in df.collect()) for name, df in nextitem_parts(_ratings(spark)).items()}
    assert p["test"] == [(0, 3), (1, 2), (2, 3), (3, 1), (4, 3)]
    assert p["valid"] == [(0, 2), (4, 5)]  # users with two ratings have no validation target
    assert p["train"] == [(0, 1), (1, 1), (2, 1), (3, 4), (4, 1)]


def test_target_metrics_by_hand(spark):
    top = spark.createDataFrame([(0, 1, 7, 1.0), (0, 3, 8, 0.5), (1, 1, 2, 1.0), (2, 12, 9, 0.1)],
                                "user_idx int, rank int, item_idx int, score double")  # fmt: skip
    targets = spark.createDataFrame([(0, 8), (1, 5), (2, 9)], "user_idx int, item_idx int")
    got = {r["user_idx"]: r for r in target_metrics(top, targets, 10).collect()}
    assert (got[0]["hr@10"], got[0]["ndcg@10"], got[0]["mrr@10"]) == (1.0, pytest.approx(0.5), pytest.approx(1 / 3))
    assert (got[1]["hr@10"], got[1]["ndcg@10"], got[1]["mrr@10"]) == (0.0, 0.0, 0.0)
    assert got[2]["hr@10"] == 0.0  # rank 12 is outside the first 10


def test_the_protocol_on_generated_data_matches_popularity_by_hand(spark, cfg_factory):
    cfg = cfg_factory("generate.n_users=40", "generate.n_items=30", "generate.n_ratings=600", "generate.min_ratings_per_user=3")
    from recsys_spark import stages

    stages.run_generate(spark, cfg)
    per_user: dict = {}
    res = run_nextitem(spark, cfg, ["popularity", "last_item"], k=5, per_user=per_user)
    ratings = stages.read_ingested(spark, cfg).toPandas()
    n = ratings.groupby("user_idx").size()
    assert res["protocol"]["test_users"] == int((n >= 2).sum()) and res["protocol"]["valid_users"] == int((n >= 3).sum())
    # popularity by hand: counts over everything but each user's latest rating; the user's other items excluded
    order = ratings.sort_values(["user_idx", "timestamp", "item_idx"])
    latest = order.groupby("user_idx").tail(1)
    latest = latest[latest["user_idx"].map(n) >= 2]
    fitted = order.drop(latest.index)
    counts = fitted.groupby("item_idx").size()
    hits, ndcg = [], []
    for u, target in zip(latest["user_idx"], latest["item_idx"], strict=True):
        seen = set(fitted.loc[fitted["user_idx"] == u, "item_idx"])
        ranked = sorted((i for i in counts.index if i not in seen), key=lambda i: (-counts[i], i))[:5]
        hits.append(target in ranked)
        ndcg.append(1 / math.log2(ranked.index(target) + 2) if target in ranked else 0.0)
    pop = res["models"]["popularity"]
    assert pop["hr@5"] == pytest.approx(np.mean(hits)) and pop["ndcg@5"] == pytest.approx(np.mean(ndcg))
    assert len(per_user["last_item"]) == res["protocol"]["test_users"]
    for m in res["models"].values():
        assert 0 <= m["ndcg@5"] <= m["hr@5"] <= 1 and 0 <= m["mrr@5"] <= m["hr@5"] and "ndcg@5_valid" in m
    # the paired comparison with the last-item model: the mean per-user difference, by hand from the per-user values
    (row,) = res["paired"]["rows"]
    assert row["reference"] == "last_item" and row["model"] == "popularity"
    by_hand = (per_user["last_item"]["ndcg@5"] - per_user["popularity"]["ndcg@5"].reindex(per_user["last_item"].index)).mean()
    assert row["diff"] == pytest.approx(by_hand) and row["ci95_lo"] <= row["diff"] <= row["ci95_hi"]
    # the temporal analysis covers every test user once in each grouping
    for rows in res["temporal"]["by"].values():
        assert sum(r["users"] for r in rows) == res["protocol"]["test_users"]


def test_target_context_by_hand(spark):
    import pandas as pd

    from recsys_spark.nextitem import target_context, temporal_breakdown

    day = 86400
    fit_on = spark.createDataFrame([(0, 1, 4.0, 3 * day), (0, 2, 4.0, 4 * day), (1, 1, 4.0, 10)], RATINGS_SCHEMA)
    targets = spark.createDataFrame([(0, 3, 4.0, 4 * day + 13 * 3600), (1, 2, 4.0, 10)], RATINGS_SCHEMA)
    ctx = target_context(fit_on, targets)
    assert ctx.loc[0].tolist() == [2, 13 * 3600, 13, 0]  # 2 ratings before; 13 h after the latest; 1970-01-05 was a Monday
    assert ctx.loc[1].tolist() == [1, 0, 0, 3]  # the same second as its latest rating; a Thursday
    per_user = {"m": pd.DataFrame({"hr@5": [1.0, 0.0], "ndcg@5": [0.5, 0.0]}, index=pd.Index([0, 1], name="user_idx"))}
    t = temporal_breakdown(ctx, per_user, 5)
    gaps = {r["segment"]: (r["users"], r["m"]["ndcg@5"]) for r in t["by"]["gap"]}
    assert gaps == {"same second": (1, 0.0), "< 1 day": (1, 0.5)}
    assert {r["segment"] for r in t["by"]["weekday"]} == {"Mon", "Thu"}
    missing = temporal_breakdown(ctx, {"m": per_user["m"].iloc[:1]}, 5)  # a user without a value scores 0
    assert {r["segment"]: r["m"]["hr@5"] for r in missing["by"]["hour"]} == {"13h": 1.0, "00h": 0.0}


def test_plot_temporal_writes_a_png(tmp_path):
    from recsys_spark.nextitem import plot_temporal

    t = {"k": 5, "by": {"gap": [{"segment": "< 1 day", "users": 3, "m": {"hr@5": 1.0, "ndcg@5": 0.5}}]}}
    path = plot_temporal(t, str(tmp_path / "t.png"))
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
