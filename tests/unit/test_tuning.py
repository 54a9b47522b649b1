"""The tuning objective: RMSE or a top-N metric on the validation part, values worked out by hand."""

from __future__ import annotations

import math

import pytest

from recsys_spark.recommender import Scale
from recsys_spark.schemas import RATINGS_SCHEMA
from recsys_spark.tuning import load_space, make_objective, parse_metric

# fit part: item counts i0 4, i1 3, i2 2, i3 1 (i4 unrated); mean rating 34 / 10 = 3.4
FIT = [(0, 0, 5.0, 1), (0, 1, 3.0, 2), (0, 2, 4.0, 3), (1, 0, 4.0, 4), (1, 1, 2.0, 5), (1, 2, 3.0, 6),
       (2, 0, 5.0, 7), (2, 1, 4.0, 8), (3, 0, 3.0, 9), (3, 3, 1.0, 10)]  # fmt: skip
VALID = [(2, 2, 4.0, 11), (3, 4, 2.0, 12)]


@pytest.fixture(scope="module")
def parts(spark):
    return spark.createDataFrame(FIT, RATINGS_SCHEMA), spark.createDataFrame(VALID, RATINGS_SCHEMA)


def test_parse_metric_accepts_rmse_and_topn_at_k_only():
    assert parse_metric("rmse") == ("rmse", None)
    assert parse_metric("ndcg@10") == ("ndcg@10", 10)
    for bad in ("ndcg", "ndcg@0", "ndcg@x", "auc@10", "mae"):
        with pytest.raises(ValueError, match="study metric"):
            parse_metric(bad)


def test_load_space_rejects_an_unknown_metric(tmp_path):
    (tmp_path / "m.toml").write_text('[study]\nmetric = "auc@5"\n')
    with pytest.raises(ValueError, match="m.toml.*study metric"):
        load_space("m", tmp_path)


def test_rmse_objective_is_minimised_and_scores_the_validation_ratings(parts):
    import optuna

    fit, valid = parts
    metric, direction, objective = make_objective("global_mean", {}, Scale(1, 5), fit, valid)
    assert (metric, direction) == ("rmse", "minimize")
    # predictions 3.4 for (4, 2): errors 0.6 and -1.4
    assert objective(optuna.trial.FixedTrial({})) == pytest.approx(math.sqrt((0.6**2 + 1.4**2) / 2))


def test_topn_objective_is_maximised_and_ranks_unseen_items_for_validation_users(parts):
    import optuna

    fit, valid = parts
    spec = {"study": {"metric": "ndcg@2"}, "space": {"kind": {"type": "categorical", "choices": ["count", "mean"]}}}
    metric, direction, objective = make_objective("popularity", spec, Scale(1, 5), fit, valid)
    assert (metric, direction) == ("ndcg@2", "maximize")
    # by count, unseen: user 2 gets [i2, i3] (its validation item first: NDCG 1), user 3 gets [i1, i2] (0)
    assert objective(optuna.trial.FixedTrial({"kind": "count"})) == pytest.approx(0.5)
    spec["study"]["metric"] = "precision@2"
    _, _, objective = make_objective("popularity", spec, Scale(1, 5), fit, valid)
    assert objective(optuna.trial.FixedTrial({"kind": "count"})) == pytest.approx(0.25)
