"""The final table's pieces on hand-made data: fusion shares, evidence, cold start, the CLI's output."""

import pytest

from recsys_spark.blend import BlendError
from recsys_spark.blend import final as fin
from recsys_spark.cli import format_list

LIST = "user_idx int, item_idx int, rank int, score double"
RATINGS = "user_idx int, item_idx int, rating double, timestamp long"
ITEMS = "item_idx int, item_id string, title string, genres array<string>, year int"
DAY = 86_400


def test_fusion_shares_sum_to_one_and_name_each_rank(spark):
    a = spark.createDataFrame([(1, 10, 1, 0.9), (1, 11, 2, 0.8)], LIST)
    b = spark.createDataFrame([(1, 11, 1, 5.0), (1, 12, 2, 4.0)], LIST)
    rows = {r.item_idx: r for r in fin.fuse_detailed({"a": a, "b": b}, "rrf", 3).collect()}
    # 11: 1/62 (a, rank 2) + 1/61 (b, rank 1): b's share is 62 / 123
    c = rows[11].contributors
    assert [x.model for x in c] == ["b", "a"] and [x.rank for x in c] == [1, 2]
    assert c[0].weight == pytest.approx(62 / 123) and c[0].weight + c[1].weight == pytest.approx(1.0)
    assert rows[11].rank == 1 and rows[11].score == pytest.approx(1 / 61 + 1 / 62)
    assert [(x.model, x.weight) for x in rows[10].contributors] == [("a", 1.0)]
    # one member: its own scores and ranks, weight 1
    single = fin.fuse_detailed({"b": b}, "single", 3).orderBy("rank").collect()
    assert [(r.item_idx, r.score) for r in single] == [(11, 5.0), (12, 4.0)]
    with pytest.raises(BlendError, match="one member"):
        fin.fuse_detailed({"a": a, "b": b}, "single", 3)


def _world(spark):
    # user 1 rates 1 (5), 2 (4), 3 (1): mean 3.33, so 1 and 2 are liked, 3 is not
    ratings = spark.createDataFrame(
        [(1, 1, 5.0, 100 * DAY), (1, 2, 4.0, 100 * DAY), (1, 3, 1.0, 100 * DAY), (2, 4, 4.0, 10 * DAY), (2, 5, 3.0, 100 * DAY)],
        RATINGS,
    )
    items = spark.createDataFrame(
        [(i, str(i), f"Film {i}", g, 2000) for i, g in
         [(1, ["Drama"]), (2, ["Comedy", "Drama"]), (3, ["Horror"]), (4, ["Comedy"]), (5, []), (6, ["Drama", "Horror"]),
          (7, ["Horror"]), (8, [])]],
        ITEMS,
    )  # fmt: skip
    # 6's neighbours: 3 (most similar, but user 1 disliked it), then 2, then 1
    nb = spark.createDataFrame([(6, 3, 0.9), (6, 2, 0.5), (6, 1, 0.4), (7, 3, 0.8), (8, 2, -0.3)], "a int, b int, sim double")
    return ratings, items, nb


def test_neighbour_evidence_names_a_liked_rated_item_only(spark):
    ratings, _, nb = _world(spark)
    recs = spark.createDataFrame([(1, 6), (1, 7), (1, 8)], "user_idx int, item_idx int")
    got = {r.item_idx: (r.because_item, r.because_rating) for r in fin.neighbour_evidence(recs, ratings, nb).collect()}
    # 6: item 2 (the most similar liked item; 3 is more similar but rated below the mean)
    # 7: its only neighbour was disliked; 8: negative similarity -> no evidence
    assert got == {6: (2, 4.0)}


def test_explanations_say_the_evidence_and_never_come_out_empty(spark):
    ratings, items, nb = _world(spark)
    lately, days = fin.popular_lately(ratings, recent_days=30, top=2)
    assert days == 30 and [r.item_idx for r in lately.orderBy("lately_rank").collect()] == [1, 2]  # 5 is one rating, ties by index
    fused = spark.createDataFrame(
        [(1, 6, 1, 0.5, [("als", 1.0, 1)]), (1, 7, 2, 0.4, [("als", 1.0, 2)]), (2, 1, 1, 3.0, [("popularity", 1.0, 1)])],
        f"{LIST}, contributors {fin.CONTRIBUTORS_TYPE}",
    )
    out = {(r.user_idx, r.item_idx): r.explanation for r in fin.explain(fused, ratings, items, nb, lately, days).collect()}
    assert out[(1, 6)] == (
        "Because you rated Film 2 4★, and users who liked it liked this; Drama, genres you rate above your average (ranked by als)."
    )
    assert out[(1, 7)] == "Users whose ratings resemble yours rated it highly (ranked by als)."  # Horror: user 1 dislikes it
    assert out[(2, 1)] == "Popular in the last 30 days (ranked by popularity)."


def test_popular_lately_widens_the_window_and_says_all_time_without_timestamps(spark):
    ratings, _, _ = _world(spark)
    # the 30-day window holds items 1, 2, 3 and 5; the fifth item (4, day 10) is outside any window within the 90 days of data
    assert fin.popular_lately(ratings, 30, 4)[1] == 30
    assert fin.popular_lately(ratings, 30, 5)[1] == 0  # the window grew to the whole data
    no_ts = ratings.drop("timestamp")
    table, days = fin.popular_lately(no_ts, 30, 3)
    assert days == 0 and table.count() == 3
    assert fin.lately_phrase(0) == "among the most rated items"


def test_cold_start_users_get_the_recent_list_with_that_said(spark):
    ratings, _, _ = _world(spark)
    user_map = spark.createDataFrame([(1, "u1"), (2, "u2"), (3, "new")], "user_idx int, user_id string")
    cold = fin.users_without_ratings(user_map, ratings)
    assert [r.user_idx for r in cold.collect()] == [3]
    lately, days = fin.popular_lately(ratings, 30, 3)
    rows = fin.cold_start_lists(cold, lately, 2, days).orderBy("rank").collect()
    assert [(r.user_idx, r.rank, r.source) for r in rows] == [(3, 1, "cold_start"), (3, 2, "cold_start")]
    assert rows[0].explanation == "You have no ratings yet, so these are the most rated items of the last 30 days."
    assert rows[0].contributors[0].model == "popular_lately"


def test_the_printed_list_shows_titles_scores_contributors_and_why():
    row = {"rank": 1, "title": "Heat (1995)", "item_id": "6", "score": 0.5, "source": "blend",
           "contributors": [{"model": "als", "weight": 0.75}, {"model": "item_knn", "weight": 0.25}],
           "explanation": "Because you rated Ronin 5★."}  # fmt: skip
    text = format_list("42", [row])
    assert text.splitlines() == [
        "user 42", "  1. Heat (1995)  (item 6, score 0.5; als 0.75, item_knn 0.25)", "     Because you rated Ronin 5★.",
    ]  # fmt: skip
    assert "cold start" in format_list("7", [{**row, "source": "cold_start"}]).splitlines()[0]
