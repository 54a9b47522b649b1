"""The synthetic generator: determinism, shape, and planted structure."""

import pytest
from pyspark.sql import Window
from pyspark.sql import functions as F

from recsys_spark.config import GenerateConfig
from recsys_spark.generate import POPULARITY_SETTINGS, generate


@pytest.fixture(scope="module")
def tables(spark):
    cfg = GenerateConfig(n_users=300, n_items=400, n_ratings=15_000, rank=4, seed=7, min_ratings_per_user=10)
    return {k: v.cache() for k, v in generate(spark, cfg).items()}  # the default: selection by taste


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


def _planted(spark, selection, **kw):
    """One factor, so users with p > 0 and p < 0 have opposite tastes; a strong taste weight."""
    cfg = GenerateConfig(
        n_users=200, n_items=300, n_ratings=8_000, rank=1, seed=3, min_ratings_per_user=20, selection=selection, **kw
    )
    t = generate(spark, cfg, latent=True)
    sign_u = t["user_factors"].select("userId", (F.col("p")[0] > 0).alias("u_pos"))
    sign_i = t["item_factors"].select("movieId", (F.col("q")[0] > 0).alias("i_pos"))
    return t["ratings"].join(sign_u, "userId").join(sign_i, "movieId")


def _agreement(rated):
    """Share of each group's ratings on items whose factor has the group's sign."""
    rows = rated.groupBy("u_pos").agg(F.avg((F.col("u_pos") == F.col("i_pos")).cast("double")).alias("a")).collect()
    return {r["u_pos"]: r["a"] for r in rows}


def _overlap(rated):
    """Jaccard of the items the two groups rate most often (their top 60 each)."""
    top = {}
    for pos in (True, False):
        rows = rated.where(F.col("u_pos") == pos).groupBy("movieId").count().orderBy(F.desc("count"), "movieId").limit(60).collect()
        top[pos] = {r["movieId"] for r in rows}
    return len(top[True] & top[False]) / len(top[True] | top[False])


def test_taste_selection_users_with_opposite_factors_rate_different_items(spark):
    taste = _planted(spark, "taste", taste=4.0, candidates=4.0)
    agree = _agreement(taste)
    assert agree[True] > 0.8 and agree[False] > 0.8, agree
    assert _overlap(taste) < 0.25
    # the same check fails when items are chosen by popularity alone
    pop = _planted(spark, "popularity")
    agree_pop = _agreement(pop)
    assert 0.35 < agree_pop[True] < 0.65 and 0.35 < agree_pop[False] < 0.65, agree_pop
    assert _overlap(pop) > 0.5


def test_taste_selection_is_deterministic_across_runs_and_partitionings(spark):
    base = dict(n_users=150, n_items=250, n_ratings=6_000, rank=3, seed=11, min_ratings_per_user=10, selection="taste")
    a = generate(spark, GenerateConfig(**base))["ratings"].orderBy("userId", "movieId").collect()
    b = generate(spark, GenerateConfig(**base))["ratings"].orderBy("userId", "movieId").collect()
    c = generate(spark, GenerateConfig(**base, partitions=7))["ratings"].orderBy("userId", "movieId").collect()
    assert a == b == c
    assert len(a) > 0.9 * 6_000 and len({(r.userId, r.movieId) for r in a}) == len(a)


def test_taste_selection_keeps_counts_and_chosen_items_are_rated_higher(spark):
    base = dict(n_users=200, n_items=300, n_ratings=8_000, rank=4, seed=5, min_ratings_per_user=15)
    taste = generate(spark, GenerateConfig(**base, selection="taste", taste=2.0))["ratings"]
    pop = generate(spark, GenerateConfig(**base, selection="popularity"))["ratings"]
    counts_t = {r.userId: r["count"] for r in taste.groupBy("userId").count().collect()}
    counts_p = {r.userId: r["count"] for r in pop.groupBy("userId").count().collect()}
    # the same planned ratings per user; the larger pool falls short of a heavy user's count less often
    assert counts_t.keys() == counts_p.keys() and all(counts_t[u] >= counts_p[u] for u in counts_t)
    assert 0.97 * 8_000 <= sum(counts_t.values()) <= 8_000 and min(counts_t.values()) >= 15
    mean = {name: df.agg(F.avg(F.col("rating").cast("double"))).first()[0] for name, df in (("t", taste), ("p", pop))}
    assert mean["t"] > mean["p"] + 0.1  # affinity enters the rating too, so chosen items score higher


def test_popularity_selection_is_the_draw_before_taste(spark):
    # selection = "popularity" with the earlier settings keeps the earlier generator: a pinned sample of its output
    cfg = GenerateConfig(n_users=50, n_items=80, n_ratings=1_500, rank=2, seed=1, min_ratings_per_user=10, **POPULARITY_SETTINGS)
    rows = generate(spark, cfg)["ratings"].orderBy("userId", "movieId").limit(5).collect()
    assert [(r.userId, r.movieId, r.rating) for r in rows] == PINNED_POPULARITY


# the first rows of that config from the generator as it was before selection by taste
# (recsys_spark/generate.py at 878861d; its whole output equals today's popularity draw)
PINNED_POPULARITY = [(1, 1, "4.5"), (1, 5, "4.0"), (1, 14, "3.5"), (1, 17, "3.0"), (1, 24, "5.0")]


def test_sequence_zero_is_the_time_order_before_the_sequential_component(spark):
    # pinned from the generator at c2abe89 (no sequential component): users' first ratings in time order
    cfg = GenerateConfig(n_users=30, n_items=60, n_ratings=900, rank=2, seed=3, min_ratings_per_user=10, sequence=0.0)
    rows = generate(spark, cfg)["ratings"].orderBy("userId", "timestamp").limit(8).collect()
    assert [(r.userId, r.movieId, r.timestamp) for r in rows] == PINNED_ORDER


PINNED_ORDER = [(1, 26, 981754810), (1, 15, 998361292), (1, 21, 1014967773), (1, 24, 1031574255), (1, 42, 1048180737),
                (1, 45, 1064787218), (1, 30, 1081393700), (1, 25, 1098000181)]  # fmt: skip


def test_the_sequential_component_keeps_a_genre_going_and_changes_only_the_times(spark):
    base = {"n_users": 60, "n_items": 200, "n_ratings": 3_000, "rank": 4, "seed": 5, "min_ratings_per_user": 20}
    out = {}
    for seq in (0.0, 1.0):
        t = generate(spark, GenerateConfig(**base, sequence=seq))
        movies = t["movies"].select("movieId", F.split("genres", r"\|")[0].alias("g0"))
        r = t["ratings"].join(movies, "movieId")
        w = Window.partitionBy("userId").orderBy("timestamp", "movieId")
        pairs = r.withColumn("prev", F.lag("g0").over(w)).where(F.col("prev").isNotNull())
        changes = pairs.groupBy("userId").agg(F.sum((F.col("prev") != F.col("g0")).cast("int")).alias("c"))
        genres = r.groupBy("userId").agg(F.countDistinct("g0").alias("g"))
        per_user = {x.userId: (x.c, x.g) for x in changes.join(genres, "userId").collect()}
        out[seq] = (per_user, sorted((x.userId, x.movieId, x.rating) for x in t["ratings"].collect()))
    assert out[0.0][1] == out[1.0][1]  # the same items and ratings: only their order in time differs
    # sequence 1: every item in its genre's block, so a user's genre changes exactly (genres - 1) times
    assert all(c == g - 1 for c, g in out[1.0][0].values())
    assert sum(c for c, _ in out[0.0][0].values()) > 2 * sum(g - 1 for _, g in out[0.0][0].values())  # uniform order: many more


def test_sequence_out_of_range_is_rejected():
    from recsys_spark.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="sequence"):
        load_config(None, ["generate.sequence=1.5"])
