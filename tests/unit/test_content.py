"""Content-based: TF-IDF by hand, group weights, profiles and their updates, block scoring,
explanations, the knowledge-based fallback, and the shared model contract."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from recsys_spark.content import (
    ContentBased,
    ContentModel,
    ItemFeaturizer,
    SideData,
    counted_ratings,
    explain,
    item_documents,
    knowledge_based,
    normalize_tag,
    profile_sums,
    profile_vectors,
    segment_prior,
    sparse_topk,
    to_long,
    trend_prior,
    update_profile_sums,
    user_segments,
)
from recsys_spark.schemas import ITEMS_SCHEMA, RATINGS_SCHEMA, TAGS_SCHEMA, USERS_SCHEMA
from tests.contract.model_contract import TRAIN, ClassScopedContract

ITEMS = [
    (0, "m0", "Heat (1995)", ["Crime", "Action"], 1995),
    (1, "m1", "Ronin (1998)", ["Action", "Thriller"], 1998),
    (2, "m2", "Toy Story (1995)", ["Animation", "Comedy"], 1995),
    (3, "m3", "Casino (1995)", ["Crime", "Drama"], 1995),
    (4, "m4", "Fargo (1996)", ["Crime", "Comedy"], 1996),
    (5, "m5", "Up (2009)", ["Animation", "Comedy"], 2009),
]  # fmt: skip
TAGS = [
    (0, 0, "heist", 1), (1, 0, "Heist!", 2), (0, 1, "heist", 3), (2, 3, "mafia", 4), (3, 3, "Mafia ", 5),
    (1, 4, "dark  comedy", 6), (2, 2, "pixar", 7), (3, 5, "pixar", 8),
]  # fmt: skip


@pytest.fixture(scope="module")
def side(spark):
    return SideData(spark.createDataFrame(ITEMS, ITEMS_SCHEMA), spark.createDataFrame(TAGS, TAGS_SCHEMA))


@pytest.fixture(scope="module")
def train(spark):
    return spark.createDataFrame(TRAIN, RATINGS_SCHEMA)


@pytest.fixture(scope="module")
def feats(side, train):
    """Item features over every group, fitted once for the module."""
    return ItemFeaturizer().fit(side.items, side.tags, train)


@pytest.fixture(scope="module")
def fitted(side, train):
    return ContentBased(max_neighbors=5).fit(train, side=side)


def _vectors(features):
    return {r["item_idx"]: dict(zip(r["indices"], r["values"], strict=True)) for r in features.vectors.collect()}


def _vocab(features):
    return {(r["group"], r["term"]): r["feature"] for r in features.vocabulary.collect()}


def test_normalize_tag(spark):
    df = spark.createDataFrame([("Sci-Fi!!  Classic ",), ("  ",), ("Amélie",)], "tag string")
    assert [r[0] for r in df.select(normalize_tag(F.col("tag"))).collect()] == ["sci fi classic", "", "amélie"]


def test_tfidf_values_match_a_hand_computation(spark):
    items = spark.createDataFrame(
        [(0, "a", "A", ["Action", "Comedy"], None), (1, "b", "B", ["Action"], None), (2, "c", "C", ["Drama"], None)], ITEMS_SCHEMA
    )
    ratings = spark.createDataFrame([], RATINGS_SCHEMA)
    feats = ItemFeaturizer(weights={"genres": 1.0}).fit(items, None, ratings)
    vocab, vec = _vocab(feats), _vectors(feats)
    # Spark's IDF: log((m + 1) / (df + 1)) with m = 3 documents
    idf_action, idf_comedy = math.log(4 / 3), math.log(4 / 2)
    idf = {r["term"]: r["idf"] for r in feats.vocabulary.collect()}
    assert idf["action"] == pytest.approx(0.2876820725) and idf["comedy"] == pytest.approx(0.6931471806)
    norm = math.hypot(idf_action, idf_comedy)  # item 0: tf 1 each, then L2
    assert vec[0][vocab[("genres", "action")]] == pytest.approx(0.2876820725 / 0.7504758)
    assert vec[0][vocab[("genres", "comedy")]] == pytest.approx(idf_comedy / norm)
    assert vec[1] == {vocab[("genres", "action")]: pytest.approx(1.0)}
    assert vec[2] == {vocab[("genres", "drama")]: pytest.approx(1.0)}


def test_group_weights_scale_their_share_of_the_cosine(spark):
    items = spark.createDataFrame([(0, "a", "A", ["Action"], 1995), (1, "b", "B", ["Drama"], 1998)], ITEMS_SCHEMA)
    feats = ItemFeaturizer(weights={"genres": 1.0, "year": 0.25}).fit(items, None, spark.createDataFrame([], RATINGS_SCHEMA))
    v = _vectors(feats)
    cos = sum(x * v[1].get(f, 0.0) for f, x in v[0].items())
    assert cos == pytest.approx(0.25 / 1.25)  # same decade, no shared genre: w_year / (w_genres + w_year)
    assert all(abs(sum(x * x for x in vec.values()) - 1) < 1e-12 for vec in v.values())


def test_documents_thermometer_popularity_and_tag_counts(spark, side):
    ratings = spark.createDataFrame([(u, 0, 4.0, u) for u in range(7)] + [(0, 1, 3.0, 9)], RATINGS_SCHEMA)
    docs = {r["item_idx"]: r for r in item_documents(side.items, side.tags, ratings).collect()}
    assert docs[0]["popularity"] == ["pop>=1", "pop>=2", "pop>=3"]  # log2(1 + 7) = 3
    assert docs[1]["popularity"] == ["pop>=1"] and docs[2]["popularity"] == []
    assert sorted(docs[0]["tags"]) == ["heist", "heist"] and docs[0]["year"] == ["decade:1990s"]
    assert docs[5]["recency"] == [] and docs[0]["genres"] == ["crime", "action"]


def test_new_items_get_the_fitted_transform(spark, side, feats, train):
    ratings = train
    again = feats.transform(side.items.where("item_idx = 4"), side.tags, ratings).collect()[0]
    want = _vectors(feats)[4]
    assert dict(zip(again["indices"], again["values"], strict=True)) == pytest.approx(want)
    unseen = spark.createDataFrame([(9, "m9", "New (1996)", ["Crime", "Western"], 1996)], ITEMS_SCHEMA)
    new = feats.transform(unseen, None, ratings).collect()[0]  # 'western' is not in the vocabulary: ignored
    assert new["indices"] and set(new["indices"]) <= set(_vocab(feats).values())


def test_save_load_item_features(spark, side, feats, train, tmp_path):
    from recsys_spark.content import ItemFeatures

    ratings = train
    feats.save(str(tmp_path / "f"))
    back = ItemFeatures.load(str(tmp_path / "f"))
    assert back.groups == feats.groups and _vectors(back) == _vectors(feats)
    want = _vectors(feats)
    re = back.transform(side.items, side.tags, ratings).collect()
    assert len(re) == len(want)
    for r in re:
        assert dict(zip(r["indices"], r["values"], strict=True)) == pytest.approx(want[r["item_idx"]])


def test_profile_update_equals_recomputation(spark, feats, train):
    base = train
    new = spark.createDataFrame([(0, 4, 1.0, 9), (1, 2, 5.0, 9), (7, 5, 4.5, 9)], RATINGS_SCHEMA)  # known users and a new one
    long = to_long(feats.vectors)
    s0, c0 = profile_sums(base, long)
    s1, c1 = update_profile_sums(s0, c0, new, long)
    sf, cf = profile_sums(base.unionByName(new), long)
    for weighting in ("centred", "rating", "binary"):
        upd = {r["user_idx"]: dict(zip(r["indices"], r["values"], strict=True)) for r in profile_vectors(s1, c1, weighting).collect()}
        full = {r["user_idx"]: dict(zip(r["indices"], r["values"], strict=True)) for r in profile_vectors(sf, cf, weighting).collect()}
        assert upd.keys() == full.keys() == {0, 1, 2, 3, 7}
        for u in full:
            assert upd[u] == pytest.approx(full[u], abs=1e-12)


def test_centred_profile_by_hand(spark, side):
    ratings = spark.createDataFrame([(0, 0, 5.0, 1), (0, 2, 3.0, 2)], RATINGS_SCHEMA)
    feats = ItemFeaturizer(weights={"genres": 1.0}).fit(side.items, None, ratings)
    vec = _vectors(feats)
    s, c = profile_sums(ratings, to_long(feats.vectors))
    prof = {r["user_idx"]: dict(zip(r["indices"], r["values"], strict=True)) for r in profile_vectors(s, c, normalize=False).collect()}
    want: dict[int, float] = {}
    for item, dev in ((0, 1.0), (2, -1.0)):  # mean 4: +1 for Heat, -1 for Toy Story
        for f, x in vec[item].items():
            want[f] = want.get(f, 0.0) + dev * x
    assert prof[0] == pytest.approx(want)


LAYOUTS = pytest.mark.parametrize("broadcast_mb", [256.0, 0.0], ids=["items-shipped", "block-pairs"])


@LAYOUTS
def test_sparse_topk_matches_brute_force(spark, broadcast_mb):
    rng = np.random.default_rng(0)
    dim, n_l, n_i, k = 12, 9, 23, 4
    L = rng.random((n_l, dim)) * (rng.random((n_l, dim)) < 0.4)
    R = rng.random((n_i, dim)) * (rng.random((n_i, dim)) < 0.4)
    R[5] = R[6]  # a tie

    def rows(M, key):
        return spark.createDataFrame(
            [(i, [int(j) for j in np.flatnonzero(M[i])], [float(x) for x in M[i][M[i] != 0]]) for i in range(len(M))],
            f"{key} int, indices array<int>, values array<double>",
        )

    seen = spark.createDataFrame([(0, 1), (0, 2), (3, 5)], "user_idx int, item_idx int")
    prior = spark.createDataFrame([(i, float(i) / n_i) for i in range(n_i)], "item_idx int, prior double")
    got = sparse_topk(
        rows(L, "user_idx"), rows(R, "item_idx"), k, dim, exclude=seen, prior=prior, prior_weight=0.3, left_block=4, item_block=7,
        broadcast_mb=broadcast_mb,
    )
    S = L @ R.T + 0.3 * (np.arange(n_i) / n_i)[None, :]
    for u, i in [(0, 1), (0, 2), (3, 5)]:
        S[u, i] = -np.inf
    by_user: dict[int, list[int]] = {}
    for r in got.orderBy("user_idx", F.desc("score"), "item_idx").collect():
        by_user.setdefault(r["user_idx"], []).append(r["item_idx"])
    for u in range(n_l):
        order = sorted(range(n_i), key=lambda i: (-S[u, i], i))[:k]
        assert by_user[u] == order


@LAYOUTS
def test_sparse_topk_adds_each_rows_group_prior(spark, broadcast_mb):
    rng = np.random.default_rng(1)
    dim, n_l, n_i, k = 10, 6, 15, 5
    L = rng.random((n_l, dim)) * (rng.random((n_l, dim)) < 0.5)
    R = rng.random((n_i, dim)) * (rng.random((n_i, dim)) < 0.5)
    groups = [0, 1, 2, None, 5, 1]  # null reads as group 0; group 5 has no prior: adds 0
    left = spark.createDataFrame(
        [(i, [int(j) for j in np.flatnonzero(L[i])], [float(x) for x in L[i][L[i] != 0]], groups[i]) for i in range(n_l)],
        "user_idx int, indices array<int>, values array<double>, segment int",
    )
    items = spark.createDataFrame(
        [(i, [int(j) for j in np.flatnonzero(R[i])], [float(x) for x in R[i][R[i] != 0]]) for i in range(n_i)],
        "item_idx int, indices array<int>, values array<double>",
    )
    P = rng.random((3, n_i))
    rows = [(g, i, float(P[g, i])) for g in range(3) for i in range(n_i) if not (g == 2 and i % 3 == 0)]  # group 2 lacks some items
    prior = spark.createDataFrame(rows, "segment int, item_idx int, prior double")
    got = sparse_topk(
        left, items, k, dim, prior=prior, prior_weight=0.5, left_group="segment", left_block=4, item_block=6, broadcast_mb=broadcast_mb
    )
    by_user: dict[int, list[int]] = {}
    for r in got.orderBy("user_idx", F.desc("score"), "item_idx").collect():
        by_user.setdefault(r["user_idx"], []).append(r["item_idx"])
    for u in range(n_l):
        g = 0 if groups[u] is None else groups[u]
        add = np.zeros(n_i) if g >= 3 else np.array([0.0 if g == 2 and i % 3 == 0 else P[g, i] for i in range(n_i)])
        S = L[u] @ R.T + 0.5 * add
        assert by_user[u] == sorted(range(n_i), key=lambda i: (-S[i], i))[:k]



@LAYOUTS
def test_sparse_topk_breaks_ties_by_the_smaller_item_across_blocks(spark, broadcast_mb):
    # every item has the same vector: the answer is the k smallest ids not excluded, whichever
    # block they fall in and wherever the k-th place cuts the tie; support counts shared features
    items = spark.createDataFrame([(i, [0, 2], [0.6, 0.8]) for i in range(30)], "item_idx int, indices array<int>, values array<double>")
    left = items.withColumnRenamed("item_idx", "a")
    got = sparse_topk(left, items, 4, 3, left_key="a", exclude_self=True, support=True, left_block=7, item_block=5,
                      broadcast_mb=broadcast_mb)  # fmt: skip
    rows = got.orderBy("a", "rank").collect()
    by_a: dict[int, list[int]] = {}
    for r in rows:
        by_a.setdefault(r["a"], []).append(r["item_idx"])
        assert r["support"] == 2 and r["score"] == pytest.approx(1.0)
    assert by_a == {a: [b for b in range(30) if b != a][:4] for a in range(30)}
    assert [r["rank"] for r in rows if r["a"] == 0] == [1, 2, 3, 4]

USERS = [
    (0, "u0", "M", 20, "engineer", "1"), (1, "u1", "F", 22, "artist", "2"), (2, "u2", "F", 40, "artist", "3"),
    (3, "u3", None, None, "writer", "4"), (7, "u7", "M", 21, "artist", "5"), (8, "u8", "M", 41, None, "6"), (9, "u9", "F", None, None, "7"),
]  # fmt: skip


def test_user_segments(spark):
    users = spark.createDataFrame(USERS, USERS_SCHEMA)
    by_age = {r["user_idx"]: r["segment"] for r in user_segments(users, ["age"], [18, 25, 35]).collect()}
    # age bins: 18 <= age < 25 -> "01" (id 1), age >= 35 -> "03" (id 2); an unknown age -> 0, the global prior
    assert by_age == {0: 1, 1: 1, 2: 2, 3: 0, 7: 1, 8: 2, 9: 0}
    by_both = {r["user_idx"]: r["segment"] for r in user_segments(users, ["gender", "age"], [18, 25, 35]).collect()}
    # keys F|01, F|03, M|01, M|03 in sorted order
    assert by_both == {1: 1, 2: 2, 0: 3, 7: 3, 8: 4, 3: 0, 9: 0}
    labels = {r["user_idx"]: r["segment_label"] for r in user_segments(users, ["gender", "age", "occupation"], [18, 25, 35]).collect()}
    assert labels[1] == "gender F, aged 18-24, occupation artist" and labels[8] is None  # user 8: occupation unknown
    young = spark.createDataFrame([(20, "a", "M", 12, "x", "z"), (21, "b", "M", 35, "x", "z")], USERS_SCHEMA)
    assert sorted(r["segment_label"] for r in user_segments(young, ["age"], [18, 25, 35]).collect()) == ["aged 35+", "aged under 18"]
    with pytest.raises(ValueError, match="segments must be"):
        user_segments(users, ["zip"])


def test_segment_prior_by_hand(spark, train):
    segments = spark.createDataFrame([(0, 1), (1, 1), (2, 2), (3, 0)], "user_idx int, segment int")
    got = {(r["segment"], r["item_idx"]): r["prior"] for r in segment_prior(train, segments, shrink=2.0).collect()}
    # TRAIN: n_j = 3, 2, 2, 2, 2 for items 0..4, N = 11, max 3.  Segment 1 (users 0, 1): 5 ratings, n_1j = 2, 1, 1, 1, 0;
    # segment 2 (user 2): 4 ratings, n_2j = 0, 1, 1, 1, 1.  n_j(s) = 11 (n_sj + 2 n_j / 11) / (N_s + 2)
    by_hand = {
        (0, 0): math.log(4) / math.log(4), (0, 1): math.log(3) / math.log(4),
        (1, 0): math.log(1 + 28 / 7) / math.log(4), (1, 1): math.log(1 + 15 / 7) / math.log(4), (1, 4): math.log(1 + 4 / 7) / math.log(4),
        (2, 0): math.log(1 + 6 / 6) / math.log(4), (2, 1): math.log(1 + 15 / 6) / math.log(4),
    }  # fmt: skip
    for key, want in by_hand.items():
        assert got[key] == pytest.approx(want)
    assert len(got) == 3 * 5  # every segment (0 included) x every rated item


DAY = 86400
# (user, item, rating, day): users' latest days 5 (user 0), 4 (user 1), 3 (user 2)
TREND = [(0, 0, 4.0, 0), (0, 1, 3.0, 1), (0, 2, 5.0, 5), (1, 0, 4.0, 3), (1, 2, 2.0, 4), (2, 0, 5.0, 1), (2, 3, 3.0, 3)]


def test_trend_prior_by_hand(spark):
    ratings = spark.createDataFrame([(u, i, r, d * DAY) for u, i, r, d in TREND], RATINGS_SCHEMA)
    prior, groups = trend_prior(ratings, None, shrink=2.0, trend_days=2.0, trend_shrink=7.0, step_days=1.0)
    # groups sorted by (segment, period): user 2 (day 3) 1, user 1 (day 4) 2, user 0 (day 5) 3
    assert {r["user_idx"]: r["segment"] for r in groups.collect()} == {2: 1, 1: 2, 0: 3}
    got = {(r["segment"], r["item_idx"]): r["prior"] for r in prior.collect()}
    # n_j = 3, 1, 2, 1 (N = 7, max 3).  The 2 days before day 5 (days 3, 4): items 0, 2, 3 once each (N_t = 3);
    # before day 4 (days 2, 3): items 0, 3 (N_t = 2); before day 3 (days 1, 2): items 1, 0 (N_t = 2): a user's own
    # day and later never count.  p_j(t) = (n_tj + 7 n_j / 7) / (N_t + 7), n_j(t) = 7 p_j(t)
    eff = {3: [2.8, 0.7, 2.1, 1.4], 2: [28 / 9, 7 / 9, 14 / 9, 14 / 9], 1: [28 / 9, 14 / 9, 14 / 9, 7 / 9]}
    for g, row in eff.items():
        for j, e in enumerate(row):
            assert got[(g, j)] == pytest.approx(math.log1p(e) / math.log(4)), (g, j)
    assert got[(0, 0)] == pytest.approx(1.0) and got[(0, 1)] == pytest.approx(math.log(2) / math.log(4))  # group 0: all time
    # with segments: users 0, 1 and 9 (no rating: the latest period) in segment 1, user 2 in none; the window's
    # shares times the segment's all-time lift (n_sj + 2 p_j) / ((N_s + 2) p_j): segment 1 rated items 0..3
    # 2, 1, 2, 0 times (N_s = 5): lifts 20/21, 9/7, 9/7, 2/7
    segments = spark.createDataFrame(
        [(0, 1, "a"), (1, 1, "a"), (2, 0, None), (9, 1, "a")], "user_idx int, segment int, segment_label string"
    )
    prior, groups = trend_prior(ratings, segments, shrink=2.0, trend_days=2.0, trend_shrink=7.0, step_days=1.0)
    assert {r["user_idx"]: (r["segment"], r["segment_label"]) for r in groups.collect()} == {
        2: (1, None),
        1: (2, "a"),
        0: (3, "a"),
        9: (3, "a"),
    }
    got = {(r["segment"], r["item_idx"]): r["prior"] for r in prior.collect()}
    for j, e in enumerate([2.8 * 20 / 21, 0.7 * 9 / 7, 2.1 * 9 / 7, 1.4 * 2 / 7]):
        assert got[(3, j)] == pytest.approx(math.log1p(e) / math.log(4)), j
    for j, e in enumerate(eff[1]):  # user 2 has no segment: the window alone
        assert got[(1, j)] == pytest.approx(math.log1p(e) / math.log(4)), j


def test_counted_ratings_leave_out_each_users_first(spark):
    # user 0: day 0 item 0, then items 1, 2, 3 tied on day 1; user 1: one rating
    rows = [(0, 0, 4.0, 0), (0, 1, 4.0, DAY), (0, 2, 4.0, DAY), (0, 3, 4.0, DAY), (1, 0, 4.0, 0)]
    ratings = spark.createDataFrame(rows, RATINGS_SCHEMA)
    assert counted_ratings(ratings, 0) is ratings
    left = sorted((r["user_idx"], r["item_idx"]) for r in counted_ratings(ratings, 2).collect())
    assert len(left) == 2 and all(u == 0 and i in (1, 2, 3) for u, i in left)  # item 0 (first) and one tied item out
    with pytest.raises(ValueError, match="timestamp"):
        counted_ratings(ratings.drop("timestamp"), 1)


def test_trend_prior_in_the_model(spark, side, train, tmp_path):
    rows = [(u, i, r, d * DAY) for u, i, r, d in TREND]
    ratings = spark.createDataFrame(rows, RATINGS_SCHEMA)
    model = ContentBased(max_neighbors=5, prior=1000.0, trend_days=2.0, trend_shrink=7.0, trend_step_days=1.0).fit(ratings, side=side)
    assert model.grouped and model.params["trend_days"] == 2.0
    # prior 1000: the window's order.  User 2 (latest day 3): n_j(t) 28/9, 14/9, 14/9, 7/9 -> item 1 or 2 after
    # item 0 (seen: 0, 3), ties by the smaller id; user 1 (day 4): 28/9, 7/9, 14/9, 14/9 -> items 3, 1 unseen
    lists: dict[int, list[int]] = {}
    for r in model.recommend(spark.createDataFrame([(1,), (2,)], "user_idx int"), k=2).orderBy("user_idx", "rank").collect():
        lists.setdefault(r["user_idx"], []).append(r["item_idx"])
    assert lists == {1: [3, 1], 2: [1, 2]}
    # a user with no rating: nothing shared, the reason says where the list came from
    reasons = {
        r["reason"] for r in model.explain(model.recommend(spark.createDataFrame([(9,)], "user_idx int"), k=2), side.items).collect()
    }
    assert reasons == {"popular lately with other users"}
    model.save(str(tmp_path / "trend"))
    again = ContentModel.load(str(tmp_path / "trend"))
    assert sorted(
        again.recommend(spark.createDataFrame([(1,), (2,)], "user_idx int"), k=2).select("user_idx", "item_idx", "rank").collect()
    ) == sorted(model.recommend(spark.createDataFrame([(1,), (2,)], "user_idx int"), k=2).select("user_idx", "item_idx", "rank").collect())
    # no timestamps: the trend is off (logged), the plain global prior
    plain = ContentBased(max_neighbors=5, prior=4.0).fit(train, side=side)
    no_ts = ContentBased(max_neighbors=5, prior=4.0, trend_days=30.0).fit(
        train.withColumn("timestamp", F.lit(None).cast("long")), side=side
    )
    assert not no_ts.grouped
    everyone = spark.createDataFrame([(u,) for u in range(4)], "user_idx int")
    cols = ["user_idx", "item_idx", "rank"]
    assert sorted(no_ts.recommend(everyone, k=3).select(*cols).collect()) == sorted(plain.recommend(everyone, k=3).select(*cols).collect())


def test_segment_priors_serve_new_users_by_their_segment(spark, side, train, tmp_path):
    users = spark.createDataFrame(USERS, USERS_SCHEMA)
    seg_side = SideData(side.items, side.tags, users)
    model = ContentBased(max_neighbors=5, prior=4.0, segments=["age"], age_edges=[18, 25, 35], segment_shrink=2.0).fit(train, side=seg_side)
    new = spark.createDataFrame([(7,), (8,), (9,)], "user_idx int")  # no ratings: their segment's prior alone

    def lists(m):
        out: dict[int, list[int]] = {}
        for r in m.recommend(new, k=5).orderBy("user_idx", "rank").collect():
            out.setdefault(r["user_idx"], []).append(r["item_idx"])
        return out

    # segment 1 (age 18-24; user 7): Heat first (n_j(1) = 4 against 15/7 for items 1-3, 4/7 for item 4);
    # segment 2 (age >= 35; user 8): item 0 last (n_j(2) = 1 against 2.5); unknown age (user 9): the global order
    assert lists(model) == {7: [0, 1, 2, 3, 4], 8: [1, 2, 3, 4, 0], 9: [0, 1, 2, 3, 4]}
    top8 = model.recommend(spark.createDataFrame([(8,)], "user_idx int"), k=1).first()
    assert top8["score"] == pytest.approx(math.log(3.5) / math.log(4))
    model.save(str(tmp_path / "seg"))
    assert lists(ContentModel.load(str(tmp_path / "seg"))) == lists(model)
    # nothing rated, so nothing shared: the reason names the segment the list came from
    reasons = {r["user_idx"]: r["reason"] for r in model.explain(model.recommend(new, k=1), side.items).collect()}
    assert reasons == {7: "popular with users aged 18-24", 8: "popular with users aged 35+", 9: "popular with other users"}
    # a users table without the attribute: every user in segment 0, the same lists as no segments at all
    blank = spark.createDataFrame([(u, f"u{u}", None, None, None, None) for u in range(10)], USERS_SCHEMA)
    plain = ContentBased(max_neighbors=5, prior=4.0).fit(train, side=side)
    blank_seg = ContentBased(max_neighbors=5, prior=4.0, segments=["age"]).fit(train, side=SideData(side.items, side.tags, blank))
    everyone = spark.createDataFrame([(u,) for u in range(10)], "user_idx int")
    cols = ["user_idx", "item_idx", "rank"]
    assert sorted(blank_seg.recommend(everyone, k=4).select(*cols).collect()) == sorted(
        plain.recommend(everyone, k=4).select(*cols).collect()
    )


def test_explanations_name_only_items_the_user_rated(spark, side, fitted, train):
    ratings, model = train, fitted
    users = spark.createDataFrame([(0,), (1,), (2,), (3,)], "user_idx int")
    recs = model.recommend(users, k=3)
    out = explain(recs, ratings, model.vectors, model.vocabulary, side.items).collect()
    rated = {(u, i) for u, i, *_ in TRAIN}
    assert len(out) == recs.count() > 0
    for r in out:
        assert r["reason"]
        if r["because_item"] is not None:
            assert (r["user_idx"], r["because_item"]) in rated
            assert r["because_title"] in r["reason"] and "★" in r["reason"]
    # Heat-lover (user 0 rated Heat 5): a crime film is explained by Heat and the shared genre
    casino = [r for r in out if r["user_idx"] == 0 and r["item_idx"] == 3]
    if casino:
        assert casino[0]["because_item"] == 0 and "crime" in casino[0]["shared"]


def test_cold_items_get_personal_predictions_from_content_neighbours(spark, fitted):
    model = fitted
    pred = model.predict(spark.createDataFrame([(0, 5), (2, 5)], "user_idx int, item_idx int")).collect()
    assert {r["source"] for r in pred} == {"content"}  # item 5 has no rating, but features and neighbours
    recs = model.recommend(
        spark.createDataFrame([(0,)], "user_idx int"), k=2, items=spark.createDataFrame([(5,)], "item_idx int")
    ).collect()
    assert [r["item_idx"] for r in recs] == [5]


def test_knowledge_based_fallback(spark, side):
    ratings = spark.createDataFrame(TRAIN, RATINGS_SCHEMA)
    top = knowledge_based(ratings, side.items, ["crime"], k=5, min_count=2).collect()
    # mu = 38/11; damped means (sum + 10 mu) / (n + 10): Heat (14, 3) 3.734, Fargo (6, 2) 3.379, Casino (5, 2) 3.295
    assert [r["item_idx"] for r in top] == [0, 4, 3] and all("Crime" in r["genres"] for r in top)
    assert top[0]["score"] == pytest.approx((14 + 380 / 11) / 13)
    assert [r["rank"] for r in top] == [1, 2, 3]
    with pytest.raises(ValueError, match="unknown genre"):
        knowledge_based(ratings, side.items, ["westernn"])


def test_fit_without_side_data_says_so(spark):
    with pytest.raises(ValueError, match="side data"):
        ContentBased().fit(spark.createDataFrame(TRAIN, RATINGS_SCHEMA))


def test_registry_builds_content_models_and_fit_takes_the_side_data(spark, side, train):
    from recsys_spark import registry
    from recsys_spark.recommender import Scale

    assert registry.uses_side("content") and registry.uses_side("content_hybrid") and not registry.uses_side("bias")
    est = registry.build("content_hybrid", Scale())
    assert est.features == "hybrid"
    # side data is an argument of fit, never part of the settings
    with pytest.raises(ValueError, match="need item side data"):
        est.fit(spark.createDataFrame([(0, 0, 4.0, 0)], RATINGS_SCHEMA))
    assert est.fit_with(train, side).dim > 0  # the models that read side data get it, the others ignore it
    assert registry.build("bias", Scale(1, 5)).fit_with(train, side).predict(train.select("user_idx", "item_idx")).count() == train.count()


class _Contract(ClassScopedContract):
    def side(self):
        from pyspark.sql import SparkSession

        spark = SparkSession.getActiveSession()
        return SideData(spark.createDataFrame(ITEMS, ITEMS_SCHEMA), spark.createDataFrame(TAGS, TAGS_SCHEMA))


class TestContent(_Contract):
    def make(self):
        return ContentBased(max_neighbors=5, scale=self.scale)

    def test_round_trip_keeps_the_featurizer(self, model, tmp_path):
        model.save(str(tmp_path / "m"))
        back = ContentModel.load(str(tmp_path / "m"))
        assert back.pipeline is not None


def test_hybrid_vectors_add_collaborative_dimensions(spark, side, train, fitted):
    hybrid = ContentBased(features="hybrid", max_neighbors=5, prior=0.2, name="content_hybrid").fit(train, side=side)
    assert hybrid.dim == fitted.dim + 4  # one dimension per training user (baseline residuals)
    norms = [sum(v * v for v in r["values"]) for r in hybrid.vectors.collect()]
    assert all(abs(n - 1) < 1e-9 for n in norms)
    # item 5 has no rating: its vector is its content part alone, and it still gets neighbours
    assert hybrid.neighbors.where("a = 5").count() > 0
    top = hybrid.recommend(spark.createDataFrame([(0,), (3,)], "user_idx int"), k=2).collect()
    seen = {(u, i) for u, i, *_ in TRAIN}
    assert top and all((r["user_idx"], r["item_idx"]) not in seen for r in top)


def test_lsh_neighbours_are_exact_cosines_of_a_subset_of_the_exact_table(spark, feats):
    from recsys_spark.content import content_neighbors, lsh_content_neighbors

    exact = {(r["a"], r["b"]): (r["sim"], r["support"]) for r in content_neighbors(feats.vectors, feats.dim, 10).collect()}
    approx = lsh_content_neighbors(feats.vectors, feats.dim, 10, min_sim=0.05, num_hash_tables=16, bucket_length=2.0).collect()
    assert approx
    for r in approx:  # every pair LSH finds is scored exactly (cosine from the Euclidean distance of unit vectors)
        assert (r["a"], r["b"]) in exact
        assert r["sim"] == pytest.approx(exact[(r["a"], r["b"])][0], abs=1e-9)
        assert r["support"] == exact[(r["a"], r["b"])][1]


@pytest.mark.parametrize("seed", range(8))
def test_shipped_topk_folds_duplicate_items_without_changing_the_answer(seed):
    # the shipped layout's body on its own (no Spark): items drawn from a few distinct vectors,
    # random seen lists (some covering whole duplicate groups), group priors, a floor; against
    # brute force with ties to the smaller id
    from recsys_spark.content.scoring import _ItemSide, _topk_task

    rng = np.random.default_rng(seed)
    dim, n_l, n_i, k = 6, 11, 40, 1 + (seed // 4) * int(rng.integers(1, 4))  # seeds 0-3: k = 1, where one lost id shows
    pool = rng.random((8, dim)) * (rng.random((8, dim)) < 0.6)
    which = rng.integers(0, 8, n_i)
    R = pool[which]
    L = rng.random((n_l, dim)) * (rng.random((n_l, dim)) < 0.7)
    ids = np.sort(rng.choice(1000, n_i, replace=False))
    G = 2
    P = rng.random((8, G))[which]  # odd seeds: a prior, the same for most duplicates; a quarter of the items their own
    P[rng.random(n_i) < 0.25] = rng.random(G)
    seen = [sorted(rng.choice(ids, int(rng.integers(0, 15)), replace=False).tolist()) for _ in range(n_l)]
    best = int(np.argmax(L[0] @ R.T))
    seen[0] = [int(i) for i, r in zip(ids, R, strict=True) if (r == R[best]).all()]  # user 0 has seen all of its best item's copies
    floor = 0.1 if seed >= 6 else None
    groups = rng.integers(0, G + 1, n_l)  # G: no prior for that row
    items = pd.DataFrame({"item_idx": ids, "indices": [np.flatnonzero(r) for r in R], "values": [r[r != 0] for r in R],
                          "_p": [list(p) for p in P]})  # fmt: skip
    left = pd.DataFrame({"user_idx": np.arange(n_l), "indices": [np.flatnonzero(r) for r in L], "values": [r[r != 0] for r in L],
                         "_x": [np.array(s, dtype=np.int64) for s in seen], "_g": groups})  # fmt: skip
    pw = 0.5 if seed % 2 else 0.0
    side = _ItemSide(items, dim, bool(pw))
    assert side.matrix.shape[0] <= (n_i // 2 if pw else 8)
    got = pd.concat(list(_topk_task(iter([left]), side=side, k=k, key="user_idx", exclude_self=False, pw=pw, floor=floor,
                                    support=True, left_block=4, item_block=(3, 100)[seed // 2 % 2])))  # fmt: skip
    for u in range(n_l):
        s = L[u] @ R.T + (pw * np.where(groups[u] < G, P[:, min(groups[u], G - 1)], 0.0) if pw else 0.0)
        cand = [(-s[j], int(ids[j])) for j in range(n_i) if int(ids[j]) not in seen[u] and (floor is None or s[j] > floor)]
        want = [i for _, i in sorted(cand)[:k]]
        mine = got[got["user_idx"] == u].sort_values("rank")
        assert mine["item_idx"].tolist() == want
        assert mine["rank"].tolist() == list(range(1, len(want) + 1))
        for i, sup in zip(mine["item_idx"], mine["support"], strict=True):
            j = int(np.flatnonzero(ids == i)[0])
            assert sup == int(((L[u] != 0) & (R[j] != 0)).sum())


def test_a_trend_prior_over_trend_max_cells_falls_back_to_the_segment_prior(spark, side):
    rows = [(u, i, r, d * DAY) for u, i, r, d in TREND]
    ratings = spark.createDataFrame(rows, RATINGS_SCHEMA)
    settings = dict(max_neighbors=5, prior=1000.0, trend_days=2.0, trend_shrink=7.0, trend_step_days=1.0)
    capped = ContentBased(**settings, trend_max_cells=3).fit(ratings, side=side)  # a few groups x 4 items > 3
    plain = ContentBased(**{**settings, "trend_days": 0.0}).fit(ratings, side=side)
    assert capped.params["trend_days"] == 0.0 and not capped.grouped
    users = spark.createDataFrame([(1,), (2,)], "user_idx int")

    def lists(model):
        out: dict[int, list[int]] = {}
        for r in model.recommend(users, k=2).orderBy("user_idx", "rank").collect():
            out.setdefault(r["user_idx"], []).append(r["item_idx"])
        return out

    # the all-time prior's lists, not the window's (test_trend_prior_in_the_model: {1: [3, 1], 2: [1, 2]})
    assert lists(capped) == lists(plain) != {1: [3, 1], 2: [1, 2]}
