"""Neighbourhood CF: similarities checked against numpy on dense co-rating vectors."""

import itertools

import numpy as np
import pytest
from pyspark.sql import functions as F

from recsys_spark.neighbors import KNN, similarities
from recsys_spark.schemas import RATINGS_SCHEMA
from tests.contract.model_contract import ModelContract

RNG = np.random.default_rng(5)
DENSE = np.where(RNG.random((12, 7)) < 0.6, RNG.integers(1, 6, (12, 7)), 0).astype(float)  # users x items, 0 = unrated


@pytest.fixture(scope="module")
def ratings(spark):
    rows = [(u, i, float(DENSE[u, i]), 0) for u, i in zip(*np.nonzero(DENSE), strict=True)]
    return spark.createDataFrame([tuple(int(x) if j < 2 else x for j, x in enumerate(r)) for r in rows], RATINGS_SCHEMA)


def numpy_item_sim(kind, a, b):
    co = (DENSE[:, a] > 0) & (DENSE[:, b] > 0)
    x, y = DENSE[co, a], DENSE[co, b]
    if kind == "cosine":
        return float(x @ y / np.sqrt((x @ x) * (y @ y)))
    if kind == "pearson":
        if co.sum() < 2 or x.std() == 0 or y.std() == 0:
            return 0.0
        return float(np.corrcoef(x, y)[0, 1])
    if kind == "adjusted_cosine":
        means = np.array([DENSE[u][DENSE[u] > 0].mean() for u in range(DENSE.shape[0])])[co]
        xa, ya = x - means, y - means
        d = np.sqrt((xa @ xa) * (ya @ ya))
        return float(xa @ ya / d) if d > 0 else 0.0
    if kind == "vector_cosine":  # whole rating vectors, unrated = 0: norms over every rating of each item
        full_a, full_b = DENSE[:, a], DENSE[:, b]
        return float(full_a @ full_b / np.sqrt((full_a @ full_a) * (full_b @ full_b)))
    if kind == "jaccard":
        na, nb = (DENSE[:, a] > 0).sum(), (DENSE[:, b] > 0).sum()
        return float(co.sum() / (na + nb - co.sum()))
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["cosine", "vector_cosine", "pearson", "adjusted_cosine", "jaccard"])
def test_item_similarities_match_numpy(ratings, kind):
    table = similarities(ratings, similarity=kind, shrinkage=0.0)
    got = {(r["a"], r["b"]): (r["sim"], r["support"]) for r in table.collect()}
    for a, b in itertools.permutations(range(DENSE.shape[1]), 2):
        co = int(((DENSE[:, a] > 0) & (DENSE[:, b] > 0)).sum())
        if co == 0:
            assert (a, b) not in got
            continue
        sim, support = got[(a, b)]
        assert support == co
        assert sim == pytest.approx(numpy_item_sim(kind, a, b), abs=1e-9), (a, b)


def test_user_based_is_item_based_on_the_transpose(spark, ratings):
    transposed = ratings.select(F.col("item_idx").alias("user_idx"), F.col("user_idx").alias("item_idx"), "rating", "timestamp")
    a = sorted(
        (r["a"], r["b"], round(r["sim"], 9)) for r in similarities(ratings, similarity="cosine", user_based=True, shrinkage=0).collect()
    )
    b = sorted((r["a"], r["b"], round(r["sim"], 9)) for r in similarities(transposed, similarity="cosine", shrinkage=0).collect())
    assert a == b


def test_shrinkage_support_cap_and_top_neighbors(ratings):
    plain = {(r["a"], r["b"]): r for r in similarities(ratings, similarity="cosine", shrinkage=0).collect()}
    shrunk = {(r["a"], r["b"]): r for r in similarities(ratings, similarity="cosine", shrinkage=10.0).collect()}
    for key, r in plain.items():
        n = r["support"]
        assert shrunk[key]["sim"] == pytest.approx(r["sim"] * (n - 1) / (n - 1 + 10.0))
    strong = similarities(ratings, similarity="cosine", shrinkage=0, min_support=5).collect()
    assert strong and all(r["support"] >= 5 for r in strong)
    # a cap of one rating per user leaves no co-ratings at all
    assert similarities(ratings, similarity="cosine", cap=1).count() == 0
    top = similarities(ratings, similarity="cosine", shrinkage=0, max_neighbors=2).collect()
    per_a = {}
    for r in top:
        per_a.setdefault(r["a"], []).append(r["sim"])
    for a, sims in per_a.items():
        assert len(sims) <= 2
        best = sorted((v["sim"] for (x, _), v in plain.items() if x == a), reverse=True)[:2]
        assert sorted(sims, reverse=True) == pytest.approx(best)


def test_prediction_by_hand(spark):
    # items 0 and 1 co-rated by users 0, 1 (cosine 1 after shrinkage 0); user 2 rated only item 0
    train = spark.createDataFrame([(0, 0, 4.0, 0), (0, 1, 4.0, 0), (1, 0, 2.0, 0), (1, 1, 2.0, 0), (2, 0, 3.0, 0)], RATINGS_SCHEMA)
    model = KNN(similarity="cosine", centering="none", shrinkage=0.0, k=5).fit(train)
    pairs = spark.createDataFrame([(2, 1), (9, 1)], "user_idx int, item_idx int")
    got = {r["user_idx"]: (r["prediction"], r["source"]) for r in model.predict(pairs).collect()}
    assert got[2] == (pytest.approx(3.0), "knn")  # the only neighbour user 2 rated: item 0, rating 3
    assert got[9][1] == "item_bias"  # unknown user: the bias baseline answers and says so
    conf = {r["user_idx"]: (r["n_neighbors"], r["sim_sum"]) for r in model.predict_with_confidence(pairs).collect()}
    assert conf == {2: (1, pytest.approx(1.0)), 9: (0, 0.0)}
    top = model.recommend(spark.createDataFrame([(2,)], "user_idx int"), 3).collect()
    assert [(r["item_idx"], r["rank"]) for r in top] == [(1, 1)]


def test_damping_and_k_by_hand(spark):
    # user 3 rated items 0 (5.0) and 1 (1.0); both are cosine-1 neighbours of item 2 (co-rated by users 0, 1)
    rows = [(u, i, r, 0) for u, (a, b) in ((0, (4.0, 4.0)), (1, (2.0, 2.0))) for i, r in ((0, a), (1, a), (2, b))]
    train = spark.createDataFrame([*rows, (3, 0, 5.0, 0), (3, 1, 1.0, 0)], RATINGS_SCHEMA)
    pair = spark.createDataFrame([(3, 2)], "user_idx int, item_idx int")

    def predict(**kw):
        return KNN(similarity="cosine", centering="none", shrinkage=0.0, **kw).fit(train).predict_with_confidence(pair).first()

    assert predict(k=5)["prediction"] == pytest.approx((5.0 + 1.0) / 2)
    assert predict(k=5, damping=1.0)["prediction"] == pytest.approx((5.0 + 1.0) / (2 + 1.0))
    one = predict(k=1)  # a tie at sim 1: the lower item id (0, rated 5) wins
    assert (one["prediction"], one["n_neighbors"]) == (pytest.approx(5.0), 1)


def test_bad_parameters(ratings):
    with pytest.raises(ValueError, match="similarity"):
        KNN(similarity="euclid").fit(ratings)
    with pytest.raises(ValueError, match="centering"):
        KNN(centering="median").fit(ratings)


class TestItemKNN(ModelContract):
    complete_lists = False

    def make(self):
        return KNN(k=3, scale=self.scale, name="item_knn")


class TestUserKNN(ModelContract):
    complete_lists = False

    def make(self):
        return KNN(user_based=True, similarity="pearson", centering="mean", k=3, scale=self.scale, name="user_knn")


def test_pearson_baseline_matches_numpy(ratings):
    from recsys_spark.baselines import BiasBaseline
    from tests.unit.test_baselines import numpy_bias

    rows = [(int(u), int(i), float(DENSE[u, i])) for u, i in zip(*np.nonzero(DENSE), strict=True)]
    mu, bu, bi = numpy_bias(rows, 15.0, 10.0, 10)
    resid = np.zeros_like(DENSE)
    for u, i, r in rows:
        resid[u, i] = r - mu - bu[u] - bi[i]
    base = BiasBaseline().fit(ratings)
    got = {(r["a"], r["b"]): r for r in similarities(ratings, similarity="pearson_baseline", shrinkage=5.0, base=base).collect()}
    for a, b in itertools.permutations(range(DENSE.shape[1]), 2):
        co = (DENSE[:, a] > 0) & (DENSE[:, b] > 0)
        if not co.any():
            continue
        x, y = resid[co, a], resid[co, b]
        n = co.sum()
        expected = x @ y / np.sqrt((x @ x) * (y @ y)) * (n - 1) / (n - 1 + 5.0)
        assert got[(a, b)]["sim"] == pytest.approx(expected, abs=1e-9)


@pytest.fixture(scope="module")
def generated(spark):
    """A few thousand generated ratings with heavy users (Zipf-ish activity)."""
    rng = np.random.default_rng(11)
    rows = set()
    for u in range(60):
        n = int(min(80, 3 + rng.pareto(1.2) * 6))
        for i in rng.choice(120, size=n, replace=False, p=np.arange(120, 0, -1) / np.arange(120, 0, -1).sum()):
            rows.add((u, int(i)))
    data = [(u, i, float(rng.integers(1, 6)), 0) for u, i in sorted(rows)]
    return spark.createDataFrame(data, RATINGS_SCHEMA).cache()


def _table(df):
    return {(r["a"], r["b"]): (r["sim"], r["support"]) for r in df.collect()}


@pytest.mark.parametrize("kind", ["cosine", "pearson", "adjusted_cosine", "pearson_baseline", "jaccard"])
@pytest.mark.parametrize("user_based", [False, True])
def test_blocks_kernel_and_salted_join_agree_with_the_join(generated, kind, user_based):
    from recsys_spark.baselines import BiasBaseline

    base = BiasBaseline().fit(generated) if kind == "pearson_baseline" else None
    common = dict(similarity=kind, user_based=user_based, shrinkage=25.0, base=base, cap=50, min_support=2)
    ref = _table(similarities(generated, **common))
    assert len(ref) > 100
    for other in (
        similarities(generated, kernel="blocks", n_blocks=3, **common),  # block pairs (0,0)..(2,2)
        similarities(generated, salt_threshold=7, **common),  # heavy keys spread over salts
    ):
        got = _table(other)
        assert got.keys() == ref.keys()
        for key, (sim, support) in ref.items():
            assert got[key][1] == support
            assert got[key][0] == pytest.approx(sim, abs=1e-9), key


def test_block_pair_stats_by_hand():
    from recsys_spark.neighbors import block_pair_stats

    # user 0 rated items 3 (x=1) and 5 (x=2); user 1 rated 3 (x=4), 5 (x=-1) and 9 (x=3)
    keys, ents, x = np.array([0, 0, 1, 1, 1]), np.array([3, 5, 3, 5, 9]), np.array([1.0, 2.0, 4.0, -1.0, 3.0])
    names = ("support", "sxy", "sxx", "syy", "sx", "sy", "n_a", "n_b")

    def as_dict(s):
        return {(a, b): {k: s[k][j] for k in names} for j, (a, b) in enumerate(zip(s["a"], s["b"], strict=True))}

    got = as_dict(block_pair_stats(keys, ents, x, keys, ents, x, same=True))
    assert got[(3, 5)] == {"support": 2, "sxy": 1 * 2 + 4 * -1, "sxx": 1 + 16, "syy": 4 + 1, "sx": 5, "sy": 1, "n_a": 2, "n_b": 2}
    assert got[(3, 9)] == {"support": 1, "sxy": 12, "sxx": 16, "syy": 9, "sx": 4, "sy": 3, "n_a": 2, "n_b": 1}
    assert got[(5, 9)] == {"support": 1, "sxy": -3, "sxx": 1, "syy": 9, "sx": -1, "sy": 3, "n_a": 2, "n_b": 1}
    assert len(got) == 3
    # two blocks, {3, 9} and {5}: every cross pair, both orders of ids allowed
    p, q = np.isin(ents, [3, 9]), ents == 5
    cross = as_dict(block_pair_stats(keys[p], ents[p], x[p], keys[q], ents[q], x[q], same=False))
    assert set(cross) == {(3, 5), (9, 5)}
    assert cross[(9, 5)] == {"support": 1, "sxy": -3, "sxx": 9, "syy": 1, "sx": 3, "sy": -1, "n_a": 1, "n_b": 2}


def test_blocks_kernel_top_k_and_threshold_match_the_join(generated):
    common = dict(similarity="cosine", shrinkage=10.0, max_neighbors=4, threshold=0.05)
    ref = _table(similarities(generated, **common))
    got = _table(similarities(generated, kernel="blocks", n_blocks=4, **common))
    assert got.keys() == ref.keys()
    assert all(got[key][0] == pytest.approx(v[0], abs=1e-9) for key, v in ref.items())
