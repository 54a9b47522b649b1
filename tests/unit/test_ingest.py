"""Validation, id maps, dedup, quarantine and accounting on tiny inline tables."""

import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from recsys_spark.ingest import IngestError, check_accounting, ingest_tables
from recsys_spark.schemas import ITEM_MAP_SCHEMA, RATINGS_SCHEMA, USER_MAP_SCHEMA

RCOLS = "source_file string, line_no long, raw string, reason string, user string, item string, rating string, timestamp string"
ICOLS = "source_file string, line_no long, raw string, reason string, item string, title string, genres string, year string"


def ratings_df(spark, rows):
    return spark.createDataFrame(
        [("r.csv", i + 1, ",".join(str(x) for x in r), None, *r) for i, r in enumerate(rows)], RCOLS
    )


def items_df(spark, rows):
    return spark.createDataFrame(
        [("m.csv", i + 1, ",".join(str(x) for x in r), None, *r) for i, r in enumerate(rows)], ICOLS
    )


def nonnull(schema):
    return schema  # ingest output is compared ignoring nullability


def test_typed_output_id_maps_and_dedup(spark):
    ratings = ratings_df(
        spark,
        [
            ("10", "7", "4.0", "100"),
            ("2", "7", "3.5", "101"),
            ("10", "7", "2.0", "300"),  # duplicate pair, later -> kept
            ("10", "3", "5", "50"),
        ],
    )
    res = ingest_tables({"ratings": (ratings, 4)}, (0.5, 5.0))
    # ids map in numeric order: users 2 -> 0, 10 -> 1; items 3 -> 0, 7 -> 1
    expected_users = spark.createDataFrame([("2", 0), ("10", 1)], USER_MAP_SCHEMA)
    expected_items = spark.createDataFrame([("3", 0), ("7", 1)], ITEM_MAP_SCHEMA)
    assert_df_equality(res.tables["user_map"], expected_users, ignore_row_order=True, ignore_nullable=True)
    assert_df_equality(res.tables["item_map"], expected_items, ignore_row_order=True, ignore_nullable=True)
    expected = spark.createDataFrame([(1, 1, 2.0, 300), (0, 1, 3.5, 101), (1, 0, 5.0, 50)], RATINGS_SCHEMA)
    assert_df_equality(res.tables["ratings"], expected, ignore_row_order=True, ignore_nullable=True)
    c = res.counts["ratings"]
    assert (c["read"], c["kept"], c["quarantined"], c["deduplicated"]) == (4, 3, 0, 1)


def test_bad_rows_go_to_quarantine_with_reason(spark):
    rows = [
        ("1", "1", "4", "100"),
        ("", "1", "4", "100"),  # missing user
        ("abc", "1", "4", "100"),  # non-numeric user
        ("1", "2", "x", "100"),  # unparsable rating
        ("1", "3", "7", "100"),  # off scale
        ("1", "4", "0", "100"),  # off scale (below)
        ("1", "5", "4", "soon"),  # unparsable timestamp
        ("1", "99", "4", "100"),  # unknown item
    ]
    items = items_df(spark, [(str(i), f"M{i}", "Drama", "1999") for i in range(1, 6)])
    res = ingest_tables({"ratings": (ratings_df(spark, rows), 8), "items": (items, 5)}, (1.0, 5.0))
    q = {r["line_no"]: r["reason"] for r in res.quarantine.where(F.col("table") == "ratings").collect()}
    assert q == {
        2: "missing user id",
        3: "non-numeric user id: 'abc'",
        4: "unparsable rating: 'x'",
        5: "rating outside the declared scale: 7 not in [1, 5]",
        6: "rating outside the declared scale: 0 not in [1, 5]",
        7: "unparsable timestamp: 'soon'",
        8: "unknown item: '99' is not in items",
    }
    raw = res.quarantine.where(F.col("line_no") == 3).first()
    assert raw["raw"] == "abc,1,4,100" and raw["source_file"] == "r.csv"
    c = res.counts["ratings"]
    assert (c["read"], c["kept"], c["quarantined"], c["deduplicated"]) == (8, 1, 7, 0)
    assert c["reasons"]["rating outside the declared scale"] == 2
    # items without ratings stay in the catalogue
    assert res.tables["items"].count() == 5
    assert res.tables["user_map"].count() == 1


def test_side_table_duplicates_and_bad_ids(spark):
    items = items_df(spark, [("1", "A (1990)", "Drama|Comedy", "1990"), ("1", "A again", "", ""), ("x", "B", "", "")])
    ratings = ratings_df(spark, [("1", "1", "4", "1")])
    res = ingest_tables({"ratings": (ratings, 1), "items": (items, 3)}, (1.0, 5.0))
    q = sorted((r["line_no"], r["reason"]) for r in res.quarantine.collect())
    assert q == [(2, "duplicate item id: '1'"), (3, "non-numeric item id: 'x'")]
    item = res.tables["items"].first()
    assert (item["item_idx"], item["title"], item["genres"], item["year"]) == (0, "A (1990)", ["Drama", "Comedy"], 1990)


def test_accounting_check_and_quarantine_limit():
    ok = {"ratings": {"read": 10, "kept": 9, "quarantined": 1, "deduplicated": 0, "reasons": {"x": 1}}}
    check_accounting(ok, 0.1, "somewhere")
    with pytest.raises(IngestError, match=r"1 of 10 rows \(10.0%\).*max_quarantine_fraction = 0.05.*x \(1\).*somewhere"):
        check_accounting(ok, 0.05, "somewhere")
    broken = {"ratings": {"read": 10, "kept": 8, "quarantined": 1, "deduplicated": 0, "reasons": {}}}
    with pytest.raises(IngestError, match="accounting broken"):
        check_accounting(broken, 1.0, "x")


def test_generic_string_ids(spark):
    ratings = ratings_df(spark, [("bob", "m-2", "4", None), ("alice", "m-1", "3", None)])
    res = ingest_tables({"ratings": (ratings, 2)}, (1.0, 5.0), numeric_ids=False)
    users = {r["user_id"]: r["user_idx"] for r in res.tables["user_map"].collect()}
    assert users == {"alice": 0, "bob": 1}
    assert res.tables["ratings"].where(F.col("timestamp").isNull()).count() == 2
