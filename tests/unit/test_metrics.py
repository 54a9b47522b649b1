"""Metrics: a hand-made case with a numpy/python reference, and MLlib's RankingEvaluator."""

import math
import random

import numpy as np
import pytest
from pyspark.ml.evaluation import RankingEvaluator
from pyspark.sql import functions as F

from recsys_spark import metrics as M
from recsys_spark.schemas import TOPN_SCHEMA


def topn_df(spark, lists):
    rows = [(u, r + 1, i, float(-r), "m") for u, items in lists.items() for r, i in enumerate(items)]
    return spark.createDataFrame(rows, TOPN_SCHEMA)


def truth_df(spark, rel):
    rows = [(u, i, float(g), 0) for u, items in rel.items() for i, g in items.items()]
    return spark.createDataFrame(rows, "user_idx int, item_idx int, rating double, timestamp long")


def reference(lists, rel, k):
    """Straight-from-the-definition per-user metrics (plain python)."""
    out = {}
    for u, R in rel.items():
        if not R:
            continue
        L = lists.get(u, [])
        Lk = L[:k]
        hits = [i for i in Lk if i in R]
        dcg = sum(1 / math.log2(p + 2) for p, i in enumerate(Lk) if i in R)
        idcg = sum(1 / math.log2(p + 2) for p in range(min(k, len(R))))
        gains = sorted((2**g - 1 for g in R.values()), reverse=True)
        idcg_g = sum(g / math.log2(p + 2) for p, g in enumerate(gains[:k]))
        dcg_g = sum((2 ** R[i] - 1) / math.log2(p + 2) for p, i in enumerate(Lk) if i in R)

        def ap(lst, denom, R=R):
            h, s = 0, 0.0
            for p, i in enumerate(lst):
                if i in R:
                    h += 1
                    s += h / (p + 1)
            return s / denom

        first = next((p + 1 for p, i in enumerate(Lk) if i in R), None)
        out[u] = {
            f"precision@{k}": len(hits) / k, f"recall@{k}": len(hits) / len(R), f"ndcg@{k}": dcg / idcg,
            f"ndcg_graded@{k}": dcg_g / idcg_g, f"map@{k}": ap(Lk, min(k, len(R))), "map": ap(L, len(R)),
            f"hr@{k}": float(bool(hits)), f"mrr@{k}": 1 / first if first else 0.0,
        }  # fmt: skip
    return out


def test_hand_made_case(spark):
    lists = {1: [10, 11, 12, 13], 3: [10]}  # user 2 gets nothing, user 3 has no test items
    rel = {1: {11: 5, 13: 3, 14: 4}, 2: {10: 4}}
    res = M.ranking_metrics(topn_df(spark, lists), truth_df(spark, rel), k=3)
    m = res.metrics
    assert m["users"] == 2
    # user 1: one hit (item 11 at rank 2) in the top 3; user 2 scores 0
    assert m["precision@3"] == pytest.approx((1 / 3) / 2)
    assert m["recall@3"] == pytest.approx((1 / 3) / 2)
    assert m["ndcg@3"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3) + 0.5) / 2)
    assert m["map@3"] == pytest.approx((0.5 / 3) / 2)
    assert m["map"] == pytest.approx(((0.5 + 2 / 4) / 3) / 2)
    assert m["hr@3"] == pytest.approx(0.5)
    assert m["mrr@3"] == pytest.approx(0.25)
    ref = reference(lists, rel, 3)
    for row in res.per_user.collect():
        for name, v in ref[row["user_idx"]].items():
            assert row[name] == pytest.approx(v), (row["user_idx"], name)


def test_random_lists_against_reference_and_ranking_evaluator(spark):
    rng = random.Random(3)
    lists, rel = {}, {}
    for u in range(40):
        items = rng.sample(range(60), 12)
        lists[u] = items[: rng.randint(0, 12)]
        rel[u] = {i: rng.randint(1, 5) for i in rng.sample(range(60), rng.randint(1, 8))}
    k = 10
    res = M.ranking_metrics(topn_df(spark, lists), truth_df(spark, rel), k=k)
    ref = reference(lists, rel, k)
    for name in ref[0]:
        assert res.metrics[name] == pytest.approx(np.mean([r[name] for r in ref.values()])), name

    # MLlib's RankingEvaluator where the definitions coincide (binary relevance)
    per_user = spark.createDataFrame(
        [([float(i) for i in lists[u]], [float(i) for i in rel[u]]) for u in rel],
        "prediction array<double>, label array<double>",
    )
    for ours, theirs in [
        (f"precision@{k}", "precisionAtK"), (f"recall@{k}", "recallAtK"), (f"ndcg@{k}", "ndcgAtK"),
        (f"map@{k}", "meanAveragePrecisionAtK"), ("map", "meanAveragePrecision"),
    ]:  # fmt: skip
        ev = RankingEvaluator(metricName=theirs, k=k)
        assert res.metrics[ours] == pytest.approx(ev.evaluate(per_user)), ours


def test_relevance_threshold(spark):
    lists = {1: [10, 11]}
    rel = {1: {10: 2, 11: 5}}
    m = M.ranking_metrics(topn_df(spark, lists), truth_df(spark, rel), k=2, relevance_threshold=4).metrics
    assert m["precision@2"] == pytest.approx(0.5) and m["mrr@2"] == pytest.approx(0.5)


def test_rating_metrics(spark):
    truth = spark.createDataFrame([(0, 0, 4.0), (0, 1, 2.0), (1, 0, 5.0)], "user_idx int, item_idx int, rating double")
    pred = spark.createDataFrame(
        [(0, 0, 3.0, "m", "bias"), (0, 1, 2.5, "m", "bias"), (1, 0, 5.0, "m", "global_mean")],
        "user_idx int, item_idx int, prediction double, model string, source string",
    )
    m = M.rating_metrics(pred, truth)
    assert m["rmse"] == pytest.approx(math.sqrt((1 + 0.25 + 0) / 3))
    assert m["mae"] == pytest.approx(1.5 / 3)
    assert m["sources"] == {"bias": 2, "global_mean": 1}
    with pytest.raises(M.MetricError, match="1 of 3 test rows have no prediction"):
        M.rating_metrics(pred.where(F.col("item_idx") == 0), truth)


def test_beyond_accuracy(spark):
    lists = {0: [1, 2], 1: [2, 3]}
    topn = topn_df(spark, lists)
    assert M.coverage(topn, 10) == pytest.approx(0.3)
    train = spark.createDataFrame(
        [(0, 1, 4.0, 0), (1, 1, 4.0, 0), (2, 2, 3.0, 0)], "user_idx int, item_idx int, rating double, timestamp long"
    )
    # p = (c+1)/(3+1): item1 3/4, item2 2/4, item3 1/4; recommended: 1, 2, 2, 3
    expected = np.mean([-math.log2(0.75), -math.log2(0.5), -math.log2(0.5), -math.log2(0.25)])
    assert M.novelty(topn, train) == pytest.approx(expected)
    feats = spark.createDataFrame([(1, ["a", "b"]), (2, ["a"]), (3, [])], "item_idx int, genres array<string>")
    # user 0: 1 - 1/sqrt(2); user 1: item 3 has no features -> distance 1
    assert M.diversity(topn, feats) == pytest.approx(((1 - 1 / math.sqrt(2)) + 1.0) / 2)


def test_business_metrics_by_hand(spark):
    lists = {0: [1, 2], 1: [2, 3]}
    topn = topn_df(spark, lists)
    ratings = "user_idx int, item_idx int, rating double, timestamp long"
    # item 1 rated by users 0, 1, 5; item 2 by 5; item 3 by 1, 5; item 4 (never recommended) by 0
    train = spark.createDataFrame([(0, 1, 4.0, 0), (1, 1, 4.0, 0), (5, 1, 3.0, 0), (5, 2, 3.0, 0), (1, 3, 5.0, 0), (5, 3, 2.0, 0),
                                   (0, 4, 1.0, 0)], ratings)  # fmt: skip
    # recommendation counts over a catalogue of 5: [1, 2, 1, 0, 0] -> sorted [0, 0, 1, 1, 2], sum 4
    # gini = sum((2i - n - 1) x_i) / (n sum x) = ((-4)0 + (-2)0 + 0*1 + 2*1 + 4*2) / (5*4) = 10/20
    stats = M.popularity_stats(topn, train, 5)
    assert stats["gini"] == pytest.approx(0.5)
    assert stats["avg_popularity"] == pytest.approx((3 + 1 + 1 + 2) / 4)  # popularity of 1, 2, 2, 3
    assert M.gini_index(np.array([3.0, 3.0, 3.0]), 3) == 0.0
    # co-occurrence: cos(1, 2) = |{5}| / sqrt(3 * 1); cos(2, 3) = |{5}| / sqrt(1 * 2)
    expected = ((1 - 1 / math.sqrt(3)) + (1 - 1 / math.sqrt(2))) / 2
    assert M.cooccurrence_diversity(topn, train) == pytest.approx(expected)
    # the k=2 most rated training items: 1 (3 ratings), 3 (2); user 0's relevant {1, 2}: 2 is unexpected and a hit;
    # user 1's relevant {3}: 3 is popular; user 7 has relevant items and no list
    rel = spark.createDataFrame([(0, 1, 4.0, 0), (0, 2, 5.0, 0), (1, 3, 4.0, 0), (7, 1, 4.0, 0)], ratings)
    assert M.serendipity(topn, rel, train, 2, 3) == pytest.approx(1 / (2 * 3))
    items = spark.createDataFrame([(1, []), (2, [])], "item_idx int, genres array<string>")
    assert not M.has_features(items) and M.has_features(spark.createDataFrame([(1, ["a"])], "item_idx int, genres array<string>"))


def test_paired_bootstrap_by_hand():
    a = np.array([1.0, 0.5, 0.0, 1.0])
    b = np.array([0.0, 0.5, 0.5, 0.0])
    res = M.paired_bootstrap(a, b, n_boot=500, seed=3)
    assert res["diff"] == pytest.approx((1.0 + 0.0 - 0.5 + 1.0) / 4) and res["users"] == 4
    # resampled means of the differences {1, 0, -0.5, 1} lie in [-0.5, 1]
    assert -0.5 <= res["ci95_lo"] <= res["diff"] <= res["ci95_hi"] <= 1.0
    assert M.paired_bootstrap(a, b, n_boot=500, seed=3) == res  # seeded
    same = M.paired_bootstrap(a, a)
    assert (same["diff"], same["ci95_lo"], same["ci95_hi"]) == (0.0, 0.0, 0.0)
    # a constant shift of 0.1 on 200 users: the interval is that shift
    x = np.linspace(0, 1, 200)
    shifted = M.paired_bootstrap(x + 0.1, x)
    assert shifted["ci95_lo"] == pytest.approx(0.1) and shifted["ci95_hi"] == pytest.approx(0.1)
    with pytest.raises(M.MetricError, match="equal-length"):
        M.paired_bootstrap(a, b[:3])


def test_cold_start_paired_differences_compare_the_first_model_with_each_other():
    import pandas as pd

    from recsys_spark.coldstart import paired_differences

    users = pd.Index([3, 5, 8], name="user_idx")
    cols = ["ndcg@2", "precision@2", "recall@2", "hr@2"]
    content = pd.DataFrame([[1.0, 0.5, 0.5, 1.0], [0.0, 0.0, 0.0, 0.0], [0.5, 0.5, 1.0, 1.0]], index=users, columns=cols)
    pop = pd.DataFrame([[0.5, 0.5, 0.5, 1.0], [0.5, 0.5, 0.5, 1.0], [0.5, 0.5, 1.0, 1.0]], index=users, columns=cols)
    out = paired_differences({"content": content, "popularity": pop, "bias": pop}, k=2, n_boot=200)
    assert set(out) == {"content - popularity", "content - bias"}
    d = out["content - popularity"]
    assert d["ndcg@2"]["diff"] == pytest.approx((0.5 - 0.5 + 0.0) / 3) and d["hr@2"]["diff"] == pytest.approx(-1 / 3)
    assert d["ndcg@2"]["users"] == 3
    with pytest.raises(ValueError, match="different users"):
        paired_differences({"content": content, "popularity": pop.iloc[:2]}, k=2)


def test_paired_rmse_bootstrap_resamples_whole_users():
    from recsys_spark.metrics import paired_rmse_bootstrap

    users = np.array([1, 1, 2, 2, 3])
    perfect, off = np.zeros(5), np.ones(5)
    r = paired_rmse_bootstrap(users, perfect, off)
    assert (r["diff"], r["ci95_lo"], r["ci95_hi"], r["users"], r["rows"]) == (1.0, 1.0, 1.0, 3, 5)
    # b is worse on user 1 only: the difference is RMSE(b) - RMSE(a) over all rows, and its interval covers user resamples
    b = np.array([2.0, 2.0, 0.0, 0.0, 0.0])
    r = paired_rmse_bootstrap(users, perfect, b)
    assert r["diff"] == pytest.approx(np.sqrt(8 / 5)) and r["ci95_lo"] == 0.0 and r["ci95_hi"] > r["diff"]


def test_auc_and_log_loss_by_hand():
    from recsys_spark.metrics import auc_logloss

    # positives 0.9 and 0.4, negatives 0.1 and 0.4: 0.9 beats both, 0.4 beats 0.1 and ties 0.4 -> 3.5 / 4
    r = auc_logloss(np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.4, 0.4]))
    assert r["auc"] == pytest.approx(0.875) and (r["positives"], r["negatives"]) == (2, 2)

    def sig(z):
        return 1 / (1 + math.exp(-z))

    want = -(math.log(sig(0.9)) + math.log(1 - sig(0.1)) + math.log(sig(0.4)) + math.log(1 - sig(0.4))) / 4
    assert r["log_loss"] == pytest.approx(want)
    assert auc_logloss(np.array([1, 0]), np.array([-800.0, 800.0]))["log_loss"] == pytest.approx(800.0)  # no overflow
    with pytest.raises(M.MetricError):
        auc_logloss(np.array([1, 1]), np.array([0.1, 0.2]))
