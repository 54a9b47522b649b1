"""Sequence models: the causal mask, attention rows, windows, sessions, tie order, a learnable transition, the contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recsys_spark.recommender import Scale
from recsys_spark.schemas import RATINGS_SCHEMA
from recsys_spark.torch.seqrec import SequenceRecommender, user_histories
from recsys_spark.torch.sequence import (
    SASRec,
    SeqGRU,
    causal_mask,
    current_session,
    cut_sessions,
    holdout_ndcg,
    input_batch,
    train_sequences,
    windows,
)
from tests.contract.model_contract import ClassScopedContract

TINY = {"dim": 8, "max_len": 4, "dropout": 0.0}


class TestSASRecContract(ClassScopedContract):
    def make(self):
        return SequenceRecommender(name="sasrec", kind="sasrec", scale=self.scale, net={**TINY, "blocks": 1}, epochs=2)


class TestSeqGRUContract(ClassScopedContract):
    def make(self):
        return SequenceRecommender(name="seq_gru", kind="seq_gru", scale=self.scale, net={**TINY, "hidden": 8}, epochs=2)


def test_causal_mask_by_hand():
    assert causal_mask(3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]


@pytest.mark.parametrize("net", [SASRec(20, dim=8, max_len=6, blocks=2, heads=2, dropout=0.0), SeqGRU(20, dim=8, max_len=6, hidden=8)])
def test_no_position_sees_a_later_item_and_attention_rows_sum_to_one(net):
    net.eval()
    seq = torch.tensor([[3, 5, 7, 9, 11, 13]])
    changed = seq.clone()
    changed[0, 4:] = torch.tensor([2, 4])  # only the last two positions differ
    with torch.no_grad():
        h, w = net.encode(seq)
        h2, w2 = net.encode(changed)
    assert torch.allclose(h[0, :4], h2[0, :4], atol=1e-6)  # positions 0..3 read nothing after themselves
    assert not torch.allclose(h[0, 4:], h2[0, 4:])  # the changed positions did change (the check can fail)
    assert torch.allclose(w.sum(-1), torch.ones(1, 6), atol=1e-6)
    assert float(w[0].triu(diagonal=1).abs().sum()) == 0.0  # no weight on a later position


def test_right_padding_does_not_change_the_last_state():
    net = SASRec(20, dim=8, max_len=6, blocks=1, dropout=0.0).eval()
    with torch.no_grad():
        short, _ = net.last_state(torch.from_numpy(input_batch([np.array([2, 4, 6])], 6)))
        h, _ = net.encode(torch.tensor([[3, 5, 7]]))  # tokens are items + 1, no padding, a shorter table
    assert torch.allclose(short[0], h[0, 2], atol=1e-6)


def test_windows_by_hand():
    x, y = windows([np.array([0, 1, 2, 3, 4]), np.array([7]), np.array([5, 6])], max_len=2)
    # tokens are items + 1; 5 items -> 4 transitions in windows of 2 from the end: (2,3)->(3,4)... then (0,1)->(1,2)
    assert x.tolist() == [[3, 4], [1, 2], [6, 0]]
    assert y.tolist() == [[4, 5], [2, 3], [7, 0]]
    assert int((y != 0).sum()) == 4 + 0 + 1  # every transition once, the single-item history none


def test_sessions_by_hand():
    ts = np.array([0, 10, 100, 105, 1000])
    assert cut_sessions(ts, 50).tolist() == [0, 0, 1, 1, 2]
    assert cut_sessions(ts, 5).tolist() == [0, 1, 2, 2, 3]  # 105 - 100 is not more than 5: same session
    assert current_session(np.array([1, 2, 3, 4, 5]), ts, 50).tolist() == [5]
    assert current_session(np.array([1, 2, 3, 4]), ts[:4], 50).tolist() == [3, 4]
    assert current_session(np.array([1, 2, 3]), ts[:3], 0).tolist() == [1, 2, 3]  # 0: no sessions


def test_histories_in_time_order_and_same_second_ties_not_by_item_index(spark):
    rows = [(0, 9, 4.0, 1), (0, 3, 4.0, 2)] + [(1, i, 4.0, 5) for i in range(12)]
    h = {r["user_idx"]: r for r in user_histories(spark.createDataFrame(rows, RATINGS_SCHEMA), seed=42).collect()}
    assert h[0]["items"] == [9, 3] and h[0]["timestamps"] == [1, 2]
    tied = h[1]["items"]
    assert sorted(tied) == list(range(12)) and tied != list(range(12))  # a hash order, not the protocol's tie rule
    again = user_histories(spark.createDataFrame(rows, RATINGS_SCHEMA), seed=42).where("user_idx = 1").first()["items"]
    assert again == tied  # the same order for the same seed


def _cycle_ratings(spark, n_users=40, n_items=8, length=6):
    """Each user walks the cycle 0 -> 1 -> ... -> 7 -> 0 from a start of its own: the next item is the last + 1."""
    rows = []
    for u in range(n_users):
        start = u % n_items
        rows += [(u, (start + t) % n_items, 4.0, 100 * t) for t in range(length)]
    return spark.createDataFrame(rows, RATINGS_SCHEMA), rows


@pytest.mark.parametrize("kind,net", [("sasrec", {"blocks": 1}), ("seq_gru", {"hidden": 16})])
def test_learns_a_transition_and_explains_with_rated_items(spark, kind, net):
    ratings, rows = _cycle_ratings(spark)
    est = SequenceRecommender(name=kind, kind=kind, scale=Scale(), net={"dim": 16, "max_len": 8, "dropout": 0.0, **net},
                              epochs=60, batch_size=16, lr=0.01)  # fmt: skip
    model = est.fit(ratings)
    assert model.info["loss"][-1] < model.info["loss"][0] / 2
    users = spark.createDataFrame([(u,) for u in range(8)], "user_idx int")
    top = {r["user_idx"]: r["item_idx"] for r in model.recommend(users, 1).collect()}
    # user u rated 6 of the 8 items starting at u % 8; its last is (u + 5) % 8, the next (u + 6) % 8, unrated
    assert top == {u: (u + 6) % 8 for u in range(8)}
    rated = {}
    for u, i, _, _ in rows:
        rated.setdefault(u, set()).add(i)
    for r in model.explain(users, 2, n_because=3).collect():
        assert len(r["because"]) == 3 and set(r["because"]) <= rated[r["user_idx"]]
        assert r["item_idx"] not in rated[r["user_idx"]]
        assert all(a >= b for a, b in zip(r["because_weight"], r["because_weight"][1:], strict=False))
        assert 0 < sum(r["because_weight"]) <= 1 + 1e-9


def test_session_mode_recommends_from_the_current_session(spark):
    # user 0's old session walks 0 -> 1 -> 2, its current one is just item 5; the others teach 5 -> 6 and 2 -> 3
    rows = [(0, 0, 4.0, 0), (0, 1, 4.0, 10), (0, 2, 4.0, 20), (0, 5, 4.0, 10_000)]
    for u in range(1, 30):
        rows += [(u, 5, 4.0, 0), (u, 6, 4.0, 10)] if u % 2 else [(u, 2, 4.0, 0), (u, 3, 4.0, 10)]
    ratings = spark.createDataFrame(rows, RATINGS_SCHEMA)
    kw = {"name": "seq_gru", "kind": "seq_gru", "scale": Scale(), "net": {"dim": 16, "hidden": 16, "max_len": 4, "dropout": 0.0},
          "epochs": 80, "batch_size": 8, "lr": 0.01, "holdout": False}  # fmt: skip
    model = SequenceRecommender(session_gap=3600, **kw).fit(ratings)
    assert model.info["sequences"] == 2 + 29  # user 0 has two sessions
    top = model.recommend(spark.createDataFrame([(0,)], "user_idx int"), 1).first()
    assert top["item_idx"] == 6  # what follows 5
    because = model.explain(spark.createDataFrame([(0,)], "user_idx int"), 1, n_because=3).first()["because"]
    assert because == [5]  # the state was read from the current session alone
    whole = SequenceRecommender(**kw).fit(ratings)
    assert whole.info["sequences"] == 30
    assert sorted(whole.explain(spark.createDataFrame([(0,)], "user_idx int"), 1, n_because=3).first()["because"]) != [5]
    with pytest.raises(ValueError, match="session_gap"):
        SequenceRecommender(session_gap=-1)


class _FixedScores:
    """A stand-in network: the same scores for every sequence (token 0, padding, first)."""

    max_len = 4

    def __init__(self, scores):
        self.scores = torch.tensor([scores], dtype=torch.float32)

    def eval(self):
        return self

    def last_state(self, seq):
        return torch.zeros(seq.shape[0], 1), torch.zeros(seq.shape[0], seq.shape[1])

    def logits(self, h):
        return self.scores.repeat(h.shape[0], 1)


def test_holdout_ndcg_by_hand():
    # items 0..4 score 0.9, 0.8, 0.7, 0.6, 0.5; item 4 is not in the catalogue
    net = _FixedScores([0.0, 0.9, 0.8, 0.7, 0.6, 0.5])
    catalogue = np.array([True, True, True, True, False])
    # sequence A saw item 0, target 2: item 1 ranks above it -> rank 2; sequence B saw 1, target 0 -> rank 1
    got = holdout_ndcg(net, [np.array([0]), np.array([1])], np.array([2, 0]), catalogue, k=10)
    assert got == pytest.approx((1 / np.log2(3) + 1.0) / 2)
    assert holdout_ndcg(net, [np.array([0])], np.array([3]), catalogue, k=1) == 0.0  # rank 3 is outside a list of 1


def test_early_stopping_keeps_the_best_epoch_and_never_trains_on_the_held_out_items():
    seqs = [np.array([(s + t) % 8 for t in range(6)]) for s in range(40)]
    w, info = train_sequences("seq_gru", seqs, 8, {"dim": 8, "hidden": 8, "max_len": 8, "dropout": 0.0}, epochs=30, batch_size=8,
                              lr=0.01, weight_decay=0.0, seed=1, holdout=True, patience=2)  # fmt: skip
    assert info["holdout_sequences"] == 40 and info["targets"] == 40 * 4  # 5 transitions each, the last one held out
    best = int(np.argmax(info["holdout_ndcg@10"]))
    assert info["best_epoch"] == best + 1 and len(info["loss"]) <= 30
    assert len(info["loss"]) == 30 or len(info["loss"]) - info["best_epoch"] == 2  # stopped after 2 epochs without progress


def test_training_does_not_depend_on_how_the_ratings_are_partitioned(spark):
    from pyspark.sql import functions as F

    ratings, _ = _cycle_ratings(spark)
    kw = dict(name="sasrec", kind="sasrec", scale=Scale(), net={**TINY, "blocks": 1}, epochs=2, holdout=False)
    a = SequenceRecommender(**kw).fit(ratings.coalesce(1))
    b = SequenceRecommender(**kw).fit(ratings.repartition(3).orderBy(F.desc("user_idx")))
    assert a.weights.keys() == b.weights.keys()
    assert all(np.array_equal(a.weights[k], b.weights[k]) for k in a.weights)
