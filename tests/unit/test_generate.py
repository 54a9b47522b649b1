"""The synthetic generator: determinism, shape, and planted structure."""

import pytest
from pyspark.sql import Window
from pyspark.sql import functions as F

from recsys_spark.config import GenerateConfig
from recsys_spark.generate import generate


@pytest.fixture(scope="module")
def tables(spark):
    cfg = GenerateConfig(n_users=300, n_items=400, n_ratings=15_000, rank=4, seed=7, min_ratings_per_user=10)
    return {k: v.cache() for k, v in generate(spark, cfg).items()}


def test_deterministic_and_independent_of_partitions(spark, tables):
    cfg = GenerateConfig(n_users=300, n_items=400, n_ratings=15_000, rank=4, seed=7, min_ratings_per_user=10, partitions=5)
    again = generate(spark, cfg)["ratings"]
    a = tables["ratings"].orderBy("userId", "movieId").collect()
    b = again.orderBy("userId", "movieId").collect()
    assert a == b
    other = generate(spark, GenerateConfig(n_users=300, n_items=400, n_ratings=15_000, rank=4, seed=8, min_ratings_per_user=10))
    assert other["ratings"].orderBy("userId", "movieId").limit(50).collect() != a[:50]


def test_sizes_and_ranges(tables):
    r = tables["ratings"]
    n = r.count()
    assert 0.9 * 15_000 <= n <= 15_000
    assert r.select("userId", "movieId").distinct().count() == n  # no duplicate pairs
    stats = r.agg(F.min(F.col("rating").cast("double")), F.max(F.col("rating").cast("double"))).first()
    assert stats[0] >= 0.5 and stats[1] <= 5.0
    per_user = r.groupBy("userId").count()
    assert per_user.agg(F.min("count")).first()[0] >= 10
    assert tables["users"].count() == 300 and tables["movies"].count() == 400
    assert tables["tags"].count() > 0


def test_heavy_tails(tables):
    r = tables["ratings"]
    n = r.count()
    pop = r.groupBy("movieId").count().orderBy(F.desc("count")).limit(40).agg(F.sum("count")).first()[0]
    assert pop / n > 0.25  # top 10% of items take well over 10% of ratings
    act = r.groupBy("userId").count().agg(F.max("count"), F.percentile_approx("count", 0.5)).first()
    assert act[0] > 4 * act[1]  # the heaviest user rates far more than the median one


def test_timestamps_increase_along_each_users_history(tables):
    # within a user, a later draw has a later timestamp; check no user has ties in time order
    r = tables["ratings"]
    w = Window.partitionBy("userId").orderBy("timestamp")
    prev = r.withColumn("prev", F.lag("timestamp").over(w))
    assert prev.where(F.col("prev") > F.col("timestamp")).count() == 0
    assert r.agg(F.min("timestamp")).first()[0] >= 946_684_800


def test_planted_biases_are_learnable(tables):
    # item means on one half of the users predict item means on the other half
    r = tables["ratings"].withColumn("rating", F.col("rating").cast("double"))
    halves = [
        r.where(F.col("userId") % 2 == k).groupBy("movieId").agg(F.avg("rating").alias(f"m{k}"), F.count("*").alias(f"n{k}"))
        for k in (0, 1)
    ]
    joined = halves[0].join(halves[1], "movieId").where((F.col("n0") >= 10) & (F.col("n1") >= 10))
    corr = joined.agg(F.corr("m0", "m1")).first()[0]
    assert corr > 0.5
