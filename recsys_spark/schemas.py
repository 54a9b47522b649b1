"""Column names and Spark schemas shared by every stage.

Raw ids are mapped once, at ingest, to contiguous ``int32`` indices
(``user_idx``/``item_idx``); every later stage works on the indices only and
the maps are saved beside the ingested tables.
"""

from __future__ import annotations

from pyspark.sql import types as T

# -- column names -----------------------------------------------------------
COL_USER = "user_idx"
COL_ITEM = "item_idx"
COL_USER_ID = "user_id"  # raw id, as a string
COL_ITEM_ID = "item_id"  # raw id, as a string
COL_RATING = "rating"
COL_TIMESTAMP = "timestamp"
COL_PREDICTION = "prediction"
COL_SCORE = "score"
# the kNN neighbour table (neighbors.similarities, lsh.lsh_similarities)
NB_A, NB_B, NB_SIM, NB_SUPPORT = "a", "b", "sim", "support"
NEIGHBORS_DDL = "a int, b int, sim double, support long"
COL_RANK = "rank"
COL_MODEL = "model"
COL_SOURCE = "source"
COL_TITLE = "title"
COL_GENRES = "genres"
COL_YEAR = "year"
COL_TAG = "tag"
COL_GENDER = "gender"
COL_AGE = "age"
COL_OCCUPATION = "occupation"
COL_ZIP = "zip"
COL_SEGMENT = "segment"  # a user segment id (content priors by demographics)

# quarantine / provenance
COL_TABLE = "table"
COL_SOURCE_FILE = "source_file"
COL_LINE_NO = "line_no"
COL_RAW = "raw"
COL_REASON = "reason"

# -- table names (directories under an ingest output) -----------------------
RATINGS = "ratings"
ITEMS = "items"
USERS = "users"
TAGS = "tags"
USER_MAP = "user_map"
ITEM_MAP = "item_map"
QUARANTINE = "quarantine"
NEGATIVES = "negatives"

# -- schemas ----------------------------------------------------------------
RATINGS_SCHEMA = T.StructType(
    [
        T.StructField(COL_USER, T.IntegerType(), False),
        T.StructField(COL_ITEM, T.IntegerType(), False),
        T.StructField(COL_RATING, T.DoubleType(), False),
        T.StructField(COL_TIMESTAMP, T.LongType(), True),
    ]
)

ITEMS_SCHEMA = T.StructType(
    [
        T.StructField(COL_ITEM, T.IntegerType(), False),
        T.StructField(COL_ITEM_ID, T.StringType(), False),
        T.StructField(COL_TITLE, T.StringType(), True),
        T.StructField(COL_GENRES, T.ArrayType(T.StringType(), False), False),
        T.StructField(COL_YEAR, T.IntegerType(), True),
    ]
)

USERS_SCHEMA = T.StructType(
    [
        T.StructField(COL_USER, T.IntegerType(), False),
        T.StructField(COL_USER_ID, T.StringType(), False),
        T.StructField(COL_GENDER, T.StringType(), True),
        T.StructField(COL_AGE, T.IntegerType(), True),
        T.StructField(COL_OCCUPATION, T.StringType(), True),
        T.StructField(COL_ZIP, T.StringType(), True),
    ]
)

TAGS_SCHEMA = T.StructType(
    [
        T.StructField(COL_USER, T.IntegerType(), False),
        T.StructField(COL_ITEM, T.IntegerType(), False),
        T.StructField(COL_TAG, T.StringType(), False),
        T.StructField(COL_TIMESTAMP, T.LongType(), True),
    ]
)

USER_MAP_SCHEMA = T.StructType(
    [
        T.StructField(COL_USER_ID, T.StringType(), False),
        T.StructField(COL_USER, T.IntegerType(), False),
    ]
)

ITEM_MAP_SCHEMA = T.StructType(
    [
        T.StructField(COL_ITEM_ID, T.StringType(), False),
        T.StructField(COL_ITEM, T.IntegerType(), False),
    ]
)

QUARANTINE_SCHEMA = T.StructType(
    [
        T.StructField(COL_TABLE, T.StringType(), False),
        T.StructField(COL_SOURCE_FILE, T.StringType(), False),
        T.StructField(COL_LINE_NO, T.LongType(), True),
        T.StructField(COL_RAW, T.StringType(), True),
        T.StructField(COL_REASON, T.StringType(), False),
    ]
)

# sampled negatives for the HR@k protocol: one row per (held-out item, negative)
NEGATIVES_SCHEMA = T.StructType(
    [
        T.StructField(COL_USER, T.IntegerType(), False),
        T.StructField("pos_item_idx", T.IntegerType(), False),
        T.StructField(COL_ITEM, T.IntegerType(), False),
    ]
)

# prediction contracts (see ARCHITECTURE.md)
PREDICTIONS_SCHEMA = T.StructType(
    [
        T.StructField(COL_USER, T.IntegerType(), False),
        T.StructField(COL_ITEM, T.IntegerType(), False),
        T.StructField(COL_PREDICTION, T.DoubleType(), False),
        T.StructField(COL_MODEL, T.StringType(), False),
        T.StructField(COL_SOURCE, T.StringType(), False),
    ]
)

TOPN_SCHEMA = T.StructType(
    [
        T.StructField(COL_USER, T.IntegerType(), False),
        T.StructField(COL_RANK, T.IntegerType(), False),
        T.StructField(COL_ITEM, T.IntegerType(), False),
        T.StructField(COL_SCORE, T.DoubleType(), False),
        T.StructField(COL_MODEL, T.StringType(), False),
    ]
)


def require_columns(df, columns, what: str = "input") -> None:
    """Raise ``ValueError`` naming the first column of ``columns`` missing from ``df``."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(
            f"{what} is missing column(s) {missing}; it has {df.columns}"
        )
