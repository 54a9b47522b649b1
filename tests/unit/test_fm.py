"""FM and DeepFM: the second-order term, fields, context codes, side tables from Spark, training, the contract."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from recsys_spark.content import SideData  # noqa: E402
from recsys_spark.schemas import ITEMS_SCHEMA, RATINGS_SCHEMA, TAGS_SCHEMA, USERS_SCHEMA  # noqa: E402
from recsys_spark.torch.fm import DeepFM, context_codes, offsets  # noqa: E402
from recsys_spark.torch.fmside import side_arrays, top_tags  # noqa: E402
from recsys_spark.torch.recommender import DeepRecommender  # noqa: E402
from tests.contract.model_contract import ClassScopedContract  # noqa: E402

MON_13H = 86400 * 4 + 3600 * 13 + 120  # 1970-01-05 13:02 UTC, a Monday


def _layout(context: bool = True, genres: int = 0, width: int = 2):
    fields = [
        {"name": "user", "size": 3, "side": "user", "width": 1},
        {"name": "gender", "size": 3, "side": "user", "width": 1},
        {"name": "item", "size": 4, "side": "item", "width": 1},
    ]
    if context:
        fields += [{"name": n, "size": s, "side": "context", "width": 1} for n, s in (("weekday", 7), ("hour", 24), ("tenure", 16))]
    if genres:
        fields.append({"name": "genres", "size": genres, "side": "item", "multi": True, "width": width})
    return {"fields": fields}


def test_second_order_term_equals_the_pairwise_sum_on_a_hand_case():
    v = torch.tensor([[[1.0, 2.0], [3.0, -1.0], [0.5, 4.0]]])
    # <v1,v2> = 3 - 2 = 1; <v1,v3> = 0.5 + 8 = 8.5; <v2,v3> = 1.5 - 4 = -2.5
    assert DeepFM.second_order(v).item() == pytest.approx(7.0)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(5, 6, 3)))
    pairwise = sum((x[:, f] * x[:, g]).sum(-1) for f in range(6) for g in range(f + 1, 6))
    assert torch.allclose(DeepFM.second_order(x), pairwise)


def test_context_codes_by_hand():
    wd, hr, ten = context_codes(np.array([0, MON_13H, -1]), np.array([0.0, 0.0, 0.0]))
    assert wd.tolist() == [4, 1, 0]  # Thursday is the 4th day from Monday (1-based); -1: unknown
    assert hr.tolist() == [1, 14, 0]
    assert ten.tolist() == [1, 3, 0]  # 4.54 days: floor(log2(5.54)) = 2, 1-based
    t = context_codes(torch.tensor([MON_13H]), torch.tensor([4.0]))
    assert [int(c) for c in t] == [1, 14, 1]  # same day as the first rating: tenure bucket 0


def test_fm_is_deepfm_without_the_deep_part_and_sums_its_terms():
    torch.manual_seed(0)
    lay = _layout(context=False)
    fm = DeepFM(3, 4, lay, dim=3, layers=())
    off = offsets(lay)
    fm.load_side({
        "user_cat": np.array([[off["user"] + 1 + u, off["gender"] + 1 + u % 2] for u in range(3)]),
        "item_cat": np.array([[off["item"] + 1 + i] for i in range(4)]),
    })  # fmt: skip
    with torch.no_grad():
        fm.lin.weight[1:].normal_()
        fm.bias.fill_(0.25)
    u, i = torch.tensor([1]), torch.tensor([2])
    rows = [off["user"] + 2, off["gender"] + 2, off["item"] + 3]
    e, w = fm.emb.weight[rows], fm.lin.weight[rows, 0]
    want = 0.25 + w.sum() + (e[0] @ e[1] + e[0] @ e[2] + e[1] @ e[2])
    assert fm(u, i).item() == pytest.approx(want.item(), rel=1e-5)
    deep = DeepFM(3, 4, lay, dim=3, layers=(4,))
    assert fm.deep is None and deep.deep is not None
    assert {k for k in fm.state_dict()} < {k for k in deep.state_dict()}  # the same model plus the tower


def test_multi_valued_fields_are_mean_pooled_and_empty_ones_are_zero():
    lay = _layout(context=False, genres=3, width=2)
    net = DeepFM(1, 2, lay, dim=2, layers=())
    off = offsets(lay)
    g0, g1 = off["genres"] + 1, off["genres"] + 2
    net.load_side({"item_multi_genres": np.array([[g0, g1], [0, 0]])})
    v, w = net.field_vectors(torch.tensor([0, 0]), torch.tensor([0, 1]))
    assert torch.allclose(v[0, -1], (net.emb.weight[g0] + net.emb.weight[g1]) / 2)
    assert torch.count_nonzero(v[1, -1]) == 0 and w[1, -1] == 0


def test_a_missing_timestamp_means_the_users_latest_context():
    lay = _layout()
    net = DeepFM(3, 4, lay, dim=4, layers=(8,))
    off = offsets(lay)
    last = np.array([[off["weekday"] + 2, off["hour"] + 5, off["tenure"] + 1]] * 3)
    net.load_side({"last_context": last, "first_day": np.zeros(3, dtype=np.float32)})
    ctx = net._context(torch.tensor([0, 1]), torch.tensor([-1, MON_13H]))
    assert ctx[0].tolist() == last[0].tolist()
    assert ctx[1].tolist() == [off["weekday"] + 1, off["hour"] + 14, off["tenure"] + 3]
    net.eval()
    u, i = torch.tensor([0]), torch.tensor([1])
    assert net(u, i).item() == pytest.approx(net(u, i, torch.tensor([-1])).item())


def test_interaction_strengths_are_mean_absolute_field_dots():
    lay = _layout(context=False)
    net = DeepFM(3, 4, lay, dim=3, layers=())
    u, i = torch.tensor([0, 1, 2]), torch.tensor([0, 1, 3])
    m = net.interactions(u, i)
    v, _ = net.field_vectors(u, i)
    want = (v[:, 0] * v[:, 2]).sum(-1).abs().mean().item()  # user x item
    assert m.shape == (3, 3) and np.allclose(m, m.T) and np.all(np.diag(m) == 0)
    assert m[0, 2] == pytest.approx(want, rel=1e-5)
    assert net.order == ["user", "gender", "item"]


def test_side_shapes_are_checked():
    net = DeepFM(3, 4, _layout(context=False), dim=2, layers=())
    with pytest.raises(ValueError, match="user_cat"):
        net.load_side({"user_cat": np.zeros((2, 2), dtype=np.int64)})


ITEMS = [(0, "a", "A", ["Drama"], 1995), (1, "b", "B", ["Comedy", "Drama"], 1972), (2, "c", "C", [], None)]
USERS = [(0, "u0", "F", 34, "writer", "1"), (1, "u1", "M", 61, "doctor", "2")]
TAGS = [(0, 0, "Funny ", 1), (1, 0, "funny", 2), (0, 0, "dark", 3), (1, 1, "dark", 4), (0, 2, "odd", 5)]


@pytest.fixture(scope="module")
def side(spark):
    return SideData(
        spark.createDataFrame(ITEMS, ITEMS_SCHEMA), spark.createDataFrame(TAGS, TAGS_SCHEMA), spark.createDataFrame(USERS, USERS_SCHEMA)
    )


def test_top_tags_keep_the_most_used_of_the_widest_spread(spark, side):
    tagged, words = top_tags(side.tags, vocab=2, per_item=1)
    assert words == ["dark", "funny"]  # dark on 2 items; funny and odd on 1 each, ties by name
    got = {r["item_idx"]: r["tag_ids"] for r in tagged.collect()}
    assert got == {0: [1], 1: [0]}  # item 0: "funny" twice beats "dark" once


def test_side_arrays_from_spark(spark, side):
    train = spark.createDataFrame([(0, 0, 4.0, MON_13H), (0, 1, 3.0, MON_13H + 86400 * 2), (1, 2, 5.0, 0)], RATINGS_SCHEMA)
    layout, a = side_arrays(train, side, n_users=3, n_items=3, tag_vocab=2, tags_per_item=2)
    names = [f["name"] for f in layout["fields"]]
    assert names == ["user", "gender", "age", "occupation", "item", "decade", "weekday", "hour", "tenure", "genres", "tags"]
    off = offsets(layout)
    assert a["user_cat"][:, 0].tolist() == [off["user"] + 1, off["user"] + 2, off["user"] + 3]
    assert a["user_cat"][0, 1:].tolist() == [off["gender"] + 1, off["age"] + 4, off["occupation"] + 2]  # F, 30s, "writer"
    assert a["user_cat"][2, 1:].tolist() == [off["gender"], off["age"], off["occupation"]]  # no demographics: unknown
    assert a["item_cat"][:, 1].tolist() == [off["decade"] + 3, off["decade"] + 1, off["decade"]]  # 1990s, 1970s, no year
    assert a["item_multi_genres"].tolist() == [[off["genres"] + 2, 0], [off["genres"] + 1, off["genres"] + 2], [0, 0]]
    assert a["item_multi_tags"][0].tolist() == [off["tags"] + 2, off["tags"] + 1]  # funny (2), dark (1)
    assert a["last_context"][0].tolist() == [off["weekday"] + 3, off["hour"] + 14, off["tenure"] + 2]  # Wednesday, 2 days in
    assert a["last_context"][2].tolist() == [off["weekday"], off["hour"], off["tenure"]]  # no ratings
    net = DeepFM(3, 3, layout, dim=2, layers=())
    net.load_side(a)  # every array fits the network's buffers


def test_without_side_data_or_timestamps_only_the_ids_remain(spark):
    train = spark.createDataFrame([(0, 0, 4.0, None), (1, 1, 3.0, None)], RATINGS_SCHEMA)
    layout, a = side_arrays(train, None, 2, 2)
    assert [f["name"] for f in layout["fields"]] == ["user", "item"] and a["last_context"].shape == (2, 0)


def _taste_ratings(n_users=40, n_items=30, seed=0):
    """Users of gender g like items of genre g (ratings 5) and dislike the others (1); ids alone carry little."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        for i in rng.choice(n_items, size=8, replace=False):
            rows.append((u, int(i), 5.0 if i % 2 == u % 2 else 1.0, 10**9 + u * 1000 + int(i)))
    return rows


@pytest.mark.slow
def test_deepfm_learns_a_side_feature_taste_and_its_ranking_head_ignores_low_ratings(spark):
    rows = _taste_ratings()
    train = spark.createDataFrame(rows, RATINGS_SCHEMA)
    items = spark.createDataFrame([(i, str(i), None, ["Even" if i % 2 == 0 else "Odd"], None) for i in range(30)], ITEMS_SCHEMA)
    users = spark.createDataFrame([(u, str(u), "F" if u % 2 == 0 else "M", 30, "x", "0") for u in range(40)], USERS_SCHEMA)
    sd = SideData(items, None, users)
    est = DeepRecommender(name="fm_explicit", kind="deepfm", explicit=True, epochs=60, lr=0.03, batch_size=64, valid_fraction=0.0,
                          net={"dim": 4, "layers": []})  # fmt: skip
    model = est.fit_with(train, sd)
    pairs = spark.createDataFrame([(0, 28), (0, 29), (1, 28), (1, 29)], "user_idx int, item_idx int")
    p = {(r["user_idx"], r["item_idx"]): r["prediction"] for r in model.predict(pairs).collect()}
    assert p[(0, 28)] > p[(0, 29)] + 1.0 and p[(1, 29)] > p[(1, 28)] + 1.0  # the taste, through gender x genre
    # the ranking head: only the 5s are positives, so a user's top items are of their own genre
    rank = DeepRecommender(name="fm", kind="deepfm", epochs=40, lr=0.03, batch_size=64, valid_fraction=0.0, positive_min=4.0,
                           n_neg=2, net={"dim": 4, "layers": []})  # fmt: skip
    top = rank.fit_with(train, sd).recommend(spark.createDataFrame([(u,) for u in range(40)], "user_idx int"), 3).collect()
    same = np.mean([r["item_idx"] % 2 == r["user_idx"] % 2 for r in top])
    assert same > 0.8


class TestDeepFMContract(ClassScopedContract):
    def side(self):
        from pyspark.sql import SparkSession

        spark = SparkSession.getActiveSession()
        items = spark.createDataFrame([(i, str(i), None, ["Drama"] if i % 2 else ["Comedy"], 1990 + i) for i in range(5)], ITEMS_SCHEMA)
        return SideData(items, None, None)

    def make(self):
        return DeepRecommender(name="deepfm_explicit", kind="deepfm", explicit=True, scale=self.scale, epochs=2,
                               net={"dim": 4, "layers": [8]}, valid_fraction=0.0)  # fmt: skip


class TestFMRankingContract(ClassScopedContract):
    def make(self):  # no side data at all: ids and context only
        return DeepRecommender(name="fm", kind="deepfm", scale=self.scale, epochs=2, net={"dim": 4, "layers": []}, valid_fraction=0.0,
                               positive_min=4.0)  # fmt: skip
