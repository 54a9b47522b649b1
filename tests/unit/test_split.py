"""Splitters on tiny inline data; expectations worked out by hand."""

from collections import Counter

import pytest
from pyspark.sql import functions as F

from recsys_spark import split as S
from recsys_spark.schemas import RATINGS_SCHEMA


@pytest.fixture(scope="module")
def ratings(spark):
    # user 0: 8 ratings at t=1..8; user 1: 4 ratings; user 2: a single rating
    rows = [(0, i, 4.0, i + 1) for i in range(8)] + [(1, 10 + i, 3.0, 100 - i) for i in range(4)] + [(2, 5, 5.0, 7)]
    return spark.createDataFrame(rows, RATINGS_SCHEMA)


def by_part(df):
    return {p: sorted((r["user_idx"], r["item_idx"]) for r in d.collect()) for p, d in S.parts(df).items()}


def assert_partition(ratings, assigned):
    """Every input row is in exactly one part."""
    parts = by_part(assigned)
    all_rows = [x for p in parts.values() for x in p]
    assert sorted(all_rows) == sorted((r["user_idx"], r["item_idx"]) for r in ratings.collect())
    assert len(set(all_rows)) == len(all_rows)
    return parts


def test_stratified_per_user_counts(ratings):
    parts = assert_partition(ratings, S.stratified_split(ratings, 0.75, seed=42))
    train = Counter(u for u, _ in parts["train"])
    test = Counter(u for u, _ in parts["test"])
    assert train == {0: 6, 1: 3, 2: 1}  # round(8*.75)=6, round(4*.75)=3, single rating stays in train
    assert test == {0: 2, 1: 1}
    assert parts["valid"] == []


def test_stratified_is_seeded(ratings):
    a = by_part(S.stratified_split(ratings, 0.75, seed=1))
    b = by_part(S.stratified_split(ratings.repartition(3), 0.75, seed=1))
    c = by_part(S.stratified_split(ratings, 0.75, seed=2))
    assert a == b  # independent of partitioning
    assert a != c


def test_stratified_with_valid(ratings):
    parts = assert_partition(ratings, S.stratified_split(ratings, 0.75, seed=42, valid_ratio=0.34))
    counts = {p: Counter(u for u, _ in rows) for p, rows in parts.items()}
    assert counts["valid"] == {0: 2, 1: 1}  # round(6*.34)=2, round(3*.34)=1
    assert counts["train"] == {0: 4, 1: 2, 2: 1}


def test_chronological_takes_earliest_for_train(ratings):
    parts = assert_partition(ratings, S.chronological_split(ratings, 0.75))
    assert [i for u, i in parts["test"] if u == 0] == [6, 7]  # t=7,8
    assert [i for u, i in parts["test"] if u == 1] == [10]  # user 1's timestamps decrease with item


def test_leave_last_out(ratings):
    parts = assert_partition(ratings, S.leave_last_out(ratings, with_valid=True))
    assert parts["test"] == [(0, 7), (1, 10)]
    assert parts["valid"] == [(0, 6), (1, 11)]
    assert (2, 5) in parts["train"]


def test_random_split_disjoint_and_roughly_sized(spark):
    df = spark.createDataFrame([(u, i, 3.0, 0) for u in range(20) for i in range(50)], RATINGS_SCHEMA)
    assigned = S.random_split(df, 0.8, seed=42, valid_ratio=0.25)
    parts = assert_partition(df, assigned)
    n = {p: len(v) for p, v in parts.items()}
    assert 740 <= n["train"] + n["valid"] <= 860
    assert 140 <= n["valid"] <= 260


def test_missing_column_is_named(spark):
    df = spark.createDataFrame([(1, 2)], "user_idx int, item_idx int")
    with pytest.raises(ValueError, match=r"missing column\(s\) \['timestamp'\]"):
        S.chronological_split(df, 0.5)


def test_sample_negatives(spark):
    # user 0 rated items 0..6 of 10; held-out (0, 6): negatives must come from 7, 8, 9
    rated = spark.createDataFrame([(0, i, 4.0, i) for i in range(7)] + [(1, 0, 3.0, 0)], RATINGS_SCHEMA)
    held = rated.where((F.col("user_idx") == 0) & (F.col("item_idx") == 6)).union(
        rated.where(F.col("user_idx") == 1)
    )
    neg, short = S.sample_negatives(held, rated, n_items=10, n=3, seed=42)
    got = {}
    for r in neg.collect():
        got.setdefault((r["user_idx"], r["pos_item_idx"]), []).append(r["item_idx"])
    assert short == 0
    assert sorted(got[(0, 6)]) == [7, 8, 9]
    assert len(set(got[(1, 0)])) == 3 and 0 not in got[(1, 0)]
    again, _ = S.sample_negatives(held, rated, n_items=10, n=3, seed=42)
    assert sorted(map(tuple, again.collect())) == sorted(map(tuple, neg.collect()))


def test_sample_negatives_reports_short_rows(spark):
    rated = spark.createDataFrame([(0, i, 4.0, i) for i in range(9)], RATINGS_SCHEMA)
    held = rated.where(F.col("item_idx") == 0)
    neg, short = S.sample_negatives(held, rated, n_items=10, n=3, seed=1, max_rounds=2)
    assert short == 1
    assert [r["item_idx"] for r in neg.collect()] == [9]
