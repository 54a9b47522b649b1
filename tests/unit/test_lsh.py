"""Approximate neighbours: exact scores for what LSH finds, and its recall measured."""

import pytest

from recsys_spark.lsh import lsh_similarities, neighbor_recall
from recsys_spark.neighbors import KNN, similarities
from tests.unit.test_neighbors import generated  # noqa: F401  (fixture)


def _table(df):
    return {(r["a"], r["b"]): (r["sim"], r["support"]) for r in df.collect()}


@pytest.mark.parametrize("kind", ["jaccard", "vector_cosine"])
def test_lsh_pairs_are_scored_exactly_and_recall_is_high(generated, kind):  # noqa: F811
    exact = similarities(generated, similarity=kind, shrinkage=10.0).cache()
    approx = lsh_similarities(generated, similarity=kind, shrinkage=10.0, num_hash_tables=12, min_sim=0.0).cache()
    ref, got = _table(exact), _table(approx)
    assert got and set(got) <= set(ref)
    for key, (sim, support) in got.items():
        assert support == ref[key][1]
        assert sim == pytest.approx(ref[key][0], abs=1e-9), key
    recall = neighbor_recall(approx, exact, k=10)
    assert 0.8 <= recall <= 1.0, recall
    # fewer tables find fewer pairs: recall is a real measurement, not a constant
    sparse = lsh_similarities(generated, similarity=kind, shrinkage=10.0, num_hash_tables=1, min_sim=0.0)
    assert neighbor_recall(sparse, exact, k=10) < recall


def test_neighbor_recall_by_hand(spark):
    schema = "a int, b int, sim double, support long"
    exact = spark.createDataFrame([(0, 1, 0.9, 3), (0, 2, 0.8, 3), (0, 3, 0.1, 3), (1, 0, 0.9, 3), (1, 2, -0.5, 2)], schema)
    approx = spark.createDataFrame([(0, 1, 0.9, 3), (0, 3, 0.1, 3), (1, 0, 0.9, 3)], schema)
    # top-2 of 0: {1, 2}, found {1, 3} -> 1 hit; top-2 (positive) of 1: {0}, found {0} -> 1 hit
    assert neighbor_recall(approx, exact, k=2) == pytest.approx(2 / 3)


def test_lsh_needs_a_hashable_similarity(generated):  # noqa: F811
    with pytest.raises(ValueError, match="approximate"):
        lsh_similarities(generated, similarity="pearson")
    with pytest.raises(ValueError, match="neighbors"):
        KNN(neighbors="annoy").fit(generated)


def test_knn_on_lsh_neighbours_predicts(spark, generated):  # noqa: F811
    model = KNN(similarity="jaccard", neighbors="lsh", centering="baseline", k=10, min_sim=0.0).fit(generated)
    pred = model.predict(generated.select("user_idx", "item_idx").limit(200)).collect()
    assert len(pred) == 200
    assert sum(r["source"] == "knn" for r in pred) > 100
