"""Paired significance tests, Holm's correction and the segment table, on fixed vectors and tiny data."""

import numpy as np
import pytest
from scipy import stats

from recsys_spark import metrics as M
from recsys_spark import segments as seg
from recsys_spark import significance as sig


def test_holm_by_hand():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    assert sig.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert sig.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError, match="p-values in"):
        sig.holm([0.1, 1.5])


def test_paired_tests_match_a_hand_t_test_and_scipy():
    a = np.array([3.0, 4.0, 5.0, 6.0, 7.0])
    b = np.zeros(5) + np.array([2.0, 2.0, 2.0, 2.0, 2.0])  # d = 1..5: mean 3, sd sqrt(2.5), t = 4.2426 on 4 df
    res = sig.paired_metric(a, b)
    assert res["diff"] == pytest.approx(3.0)
    assert res["t_p"] == pytest.approx(0.013236, abs=1e-5)
    rng = np.random.default_rng(0)
    x, y = rng.random(40), rng.random(40)
    res = sig.paired_metric(x, y)
    assert res["t_p"] == pytest.approx(stats.ttest_rel(x, y).pvalue)
    assert res["wilcoxon_p"] == pytest.approx(stats.wilcoxon(x - y).pvalue)
    assert res["ci95_lo"] <= res["diff"] <= res["ci95_hi"]
    same = sig.paired_metric(x, x)
    assert (same["t_p"], same["wilcoxon_p"], same["diff"]) == (1.0, 1.0, 0.0)


def test_rmse_tests_use_per_rating_squared_errors():
    users = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    ea = np.array([0.1, -0.2, 0.3, 0.1, -0.1, 0.2, 0.0, 0.1])
    eb = np.array([0.9, -1.2, 0.8, 0.5, -0.7, 1.1, 0.4, 0.6])
    res = sig.paired_rmse(users, ea, eb)
    assert res["diff"] == pytest.approx(np.sqrt(np.mean(eb**2)) - np.sqrt(np.mean(ea**2)))
    assert res["t_p"] == pytest.approx(stats.ttest_rel(eb**2, ea**2).pvalue)
    assert res["users"] == 4 and res["rows"] == 8


def test_chunked_bootstrap_draws_what_one_call_draws():
    rng = np.random.default_rng(1)
    a, b = rng.random(300), rng.random(300)
    idx = np.random.default_rng(42).integers(0, 300, size=(2000, 300))  # the one-call reference
    lo, hi = np.percentile((a - b)[idx].mean(axis=1), [2.5, 97.5])
    got = M.paired_bootstrap(a, b)
    assert (got["ci95_lo"], got["ci95_hi"]) == pytest.approx((lo, hi))
    assert list(M._resamples(10, 7, 3, max_cells=21)) and sum(len(c) for c in M._resamples(10, 7, 3, max_cells=21)) == 10


def test_compare_all_orients_differences_and_adjusts_over_every_comparison():
    rng = np.random.default_rng(2)
    base = rng.random(200)
    values = {"good": base + 0.2, "ok": base + 0.05 * rng.standard_normal(200), "bad": base - 0.3}
    rows = sig.compare_all(values, ["good", "ok"])
    assert [(r["reference"], r["model"]) for r in rows] == [("good", "ok"), ("good", "bad"), ("ok", "bad")]
    assert all(r["diff"] > 0 for r in rows)
    assert [r["t_p_holm"] for r in rows] == pytest.approx(list(sig.holm([r["t_p"] for r in rows])))
    lower = sig.compare_all({"a": np.full(50, 0.8) + rng.random(50) * 0.01, "b": np.full(50, 0.9)}, ["a"], higher_is_better=False)
    assert lower[0]["diff"] > 0  # for a lower-is-better value, a lower reference is the better one


def test_segment_table_by_hand(spark):
    from pyspark.sql import functions as F

    # user u has u+1 training ratings (1..10): one user per activity decile
    rows = [(u, i, 3.0 + (i % 2)) for u in range(10) for i in range(u + 1)]
    train = spark.createDataFrame(rows, "user_idx int, item_idx int, rating double")
    errors = spark.createDataFrame(
        [(0, 0, "m", 1.0), (0, 1, "m", -1.0), (9, 0, "m", 0.5), (9, 0, "n", 2.0)], "user_idx int, item_idx int, model string, err double"
    )
    per_user = spark.createDataFrame([(0, "m", 0.2), (9, "m", 0.8), (9, "n", 0.4)], "user_idx int, model string, `ndcg@10` double")
    users_seg = seg.user_segments(train)
    activity = {r["user_idx"]: (r["segment"], r["segment_order"]) for r in users_seg.where(F.col("kind") == "user activity").collect()}
    assert activity[0] == ("1-1", 0) and activity[9] == ("10-10", 9) and len({v[1] for v in activity.values()}) == 10
    table = seg.segment_table(errors, per_user, users_seg, seg.item_segments(train), "ndcg@10").collect()
    act = {(r["segment"], r["model"]): r for r in table if r["kind"] == "user activity"}
    assert act[("1-1", "m")]["rmse"] == pytest.approx(1.0) and act[("1-1", "m")]["rows"] == 2
    assert act[("10-10", "m")]["ndcg@10"] == pytest.approx(0.8) and act[("10-10", "n")]["rmse"] == pytest.approx(2.0)
    # item 0 is rated by all ten users (the most popular), item 9 by one
    pop = {(r["segment"], r["model"]): r["rmse"] for r in table if r["kind"] == "item popularity"}
    assert pop[("10-10", "m")] == pytest.approx(np.sqrt((1.0 + 0.25) / 2))
    text = seg.markdown(table, ["m", "n"], "user activity", "rmse")
    assert "| 1-1 | 2 | 1.0000 |  |" in text


def test_selection_prefers_the_cheaper_model_when_the_lead_is_not_significant():
    from recsys_spark import selection

    rng = np.random.default_rng(5)
    base = rng.random(300)
    noise = 0.01 * rng.standard_normal(300)
    values = {"big": base + 0.0005 + noise - noise.mean(), "small": base.copy(), "weak": base - 0.2}  # big leads by 0.0005
    scores = {m: float(v.mean()) for m, v in values.items()}
    costs, cov = {"big": 100.0, "small": 10.0, "weak": 1.0}, {"big": 0.5, "small": 0.4, "weak": 0.1}
    res = selection.select("ndcg@10", scores, costs, cov, values)
    assert res["leader"] == "big" and res["selected"] == "small" and res["tied_with_leader"] == ["small"]
    assert "not significant at 0.05" in res["rationale"] and "(10.0x)" in res["rationale"]
    # a clear lead is kept, and said to be significant
    values["big"] = base + 0.05
    scores["big"] = float(values["big"].mean())
    res = selection.select("ndcg@10", scores, costs, cov, values)
    assert res["selected"] == "big" and "lead is significant" in res["rationale"]
    # constraints exclude by name, with the setting in the reason
    res = selection.select("ndcg@10", scores, costs, cov, values, max_cost_s=50)
    assert res["selected"] == "small" and "evaluate.max_cost_s = 50" in res["excluded"]["big"]
    latency = {"big": 4.0, "small": 0.5, "weak": 0.1}  # seconds per 1,000 users
    res = selection.select("ndcg@10", scores, costs, cov, values, latency=latency, max_latency=1.0)
    assert res["selected"] == "small" and "max_recommend_s_per_1k_users = 1" in res["excluded"]["big"]
    assert "0.50 s to recommend for 1,000 users (within the budget of 1 s)" in res["rationale"]


def test_pareto_front_by_hand():
    from recsys_spark.selection import pareto_front

    pts = {"a": (0.40, 10.0, 0.2), "b": (0.38, 20.0, 0.1), "c": (0.30, 1.0, 0.1), "d": (0.40, 10.0, 0.3)}
    assert pareto_front(pts, lower_is_better=False) == ["c", "d"]  # b is dominated by a (and d), a by d
    assert pareto_front({"x": (0.9, 5.0, 0.0), "y": (0.8, 5.0, 0.0)}, lower_is_better=True) == ["y"]
