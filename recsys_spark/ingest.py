"""Validation, id mapping and deduplication of parsed raw tables.

Pure DataFrame functions: :func:`ingest_tables` takes the parsed tables of a
dataset (see :mod:`recsys_spark.io.datasets`) and returns typed tables, the id
maps, one quarantine table and the row accounting.  Every row read ends in
exactly one of *kept*, *quarantined* (with the raw line, file, line number and
reason) or *deduplicated* (a duplicate (user, item) pair whose latest rating
was kept); :func:`check_accounting` verifies that ``read = kept + quarantined +
deduplicated`` for every table.

Reasons are ``"category: detail"`` strings; counts are kept per category.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from recsys_spark.io.lines import with_contiguous_index
from recsys_spark.schemas import (
    COL_AGE,
    COL_GENDER,
    COL_GENRES,
    COL_ITEM,
    COL_ITEM_ID,
    COL_LINE_NO,
    COL_OCCUPATION,
    COL_RATING,
    COL_RAW,
    COL_REASON,
    COL_SOURCE_FILE,
    COL_TABLE,
    COL_TAG,
    COL_TIMESTAMP,
    COL_TITLE,
    COL_USER,
    COL_USER_ID,
    COL_YEAR,
    COL_ZIP,
    ITEM_MAP_SCHEMA,
    ITEMS_SCHEMA,
    QUARANTINE_SCHEMA,
    RATINGS_SCHEMA,
    TAGS_SCHEMA,
    USER_MAP_SCHEMA,
    USERS_SCHEMA,
)

log = logging.getLogger(__name__)

KEPT, QUARANTINED, DUPLICATE = "kept", "quarantined", "deduplicated"
_STATUS = "_status"
NO_GENRES = "(no genres listed)"


class IngestError(ValueError):
    """Ingest refused the input (too many bad rows, broken accounting)."""


@dataclass
class IngestResult:
    tables: dict[str, DataFrame]  # ratings, items, users, tags, user_map, item_map
    quarantine: DataFrame
    counts: dict[str, dict] = field(default_factory=dict)


# -- field checks -----------------------------------------------------------
def _first_reason(*checks: tuple[Column, Column]) -> Column:
    """The first failing check's reason, or null."""
    expr = None
    for cond, reason in checks:
        expr = F.when(cond, reason) if expr is None else expr.when(cond, reason)
    return expr


def _quoted(c: Column) -> Column:
    return F.concat(F.lit("'"), F.coalesce(c, F.lit("")), F.lit("'"))


def _id_checks(col: str, what: str, numeric: bool) -> list[tuple[Column, Column]]:
    """Reasons an id is refused: missing; for integer ids also text, a fraction, a sign, or beyond int64."""
    c = F.trim(F.col(col))
    checks = [(c.isNull() | (c == ""), F.lit(f"missing {what} id"))]
    if numeric:
        number = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
        checks += [
            (~c.rlike(number), F.concat(F.lit(f"non-numeric {what} id: "), _quoted(c))),
            (~c.rlike(r"^[+-]?\d+$"), F.concat(F.lit(f"non-integer {what} id: "), _quoted(c))),
            (c.startswith("-") & (c.try_cast("long") != 0), F.concat(F.lit(f"negative {what} id: "), _quoted(c))),
            (c.try_cast("long").isNull(), F.concat(F.lit(f"{what} id beyond int64: "), _quoted(c))),
        ]
    return checks


def canonical_id(col: str, numeric: bool) -> Column:
    """Raw id as the string used in the maps ('007', '+7' and '7' are one integer id)."""
    c = F.trim(F.col(col))
    return c.try_cast("long").cast("string") if numeric else c


def id_kinds(numeric_ids: bool | Mapping[str, bool]) -> dict[str, bool]:
    """``{"user": bool, "item": bool}`` from one flag for both or a per-column mapping (missing: integer)."""
    if isinstance(numeric_ids, bool):
        return {"user": numeric_ids, "item": numeric_ids}
    return {c: bool(numeric_ids.get(c, True)) for c in ("user", "item")}


def _int_checks(col: str, what: str, nullable: bool) -> list[tuple[Column, Column]]:
    c = F.trim(F.col(col))
    checks = []
    if not nullable:
        checks.append((c.isNull() | (c == ""), F.lit(f"missing {what}")))
    checks.append(((c != "") & ~c.rlike(r"^-?\d{1,18}$"), F.concat(F.lit(f"unparsable {what}: "), _quoted(c))))
    return checks


def _order_key(col: str) -> list[Column]:
    # numeric ids in numeric order, other ids after them in string order
    return [F.col(col).try_cast("long").asc_nulls_last(), F.col(col)]


def build_id_map(ids: DataFrame, id_col: str, idx_col: str) -> DataFrame:
    """Contiguous int32 indices 0..n-1 for the distinct raw ids, in id order."""
    distinct = ids.select(id_col).where(F.col(id_col).isNotNull()).distinct()
    return with_contiguous_index(distinct, _order_key(id_col), idx_col).select(id_col, idx_col)


# -- tables -----------------------------------------------------------------
def validate_items(parsed: DataFrame, numeric: bool) -> DataFrame:
    """Typed items with ``reason`` and ``_status``; duplicate ids after the first are quarantined."""
    year = F.trim(F.col("year"))
    df = parsed.withColumn(
        COL_REASON,
        F.coalesce(F.col(COL_REASON), _first_reason(*_id_checks("item", "item", numeric))),
    ).withColumn(COL_ITEM_ID, canonical_id("item", numeric))
    df = _quarantine_duplicate_ids(df, COL_ITEM_ID, "item")
    genres = F.filter(
        F.transform(F.split(F.coalesce(F.col("genres"), F.lit("")), r"\|"), lambda g: F.trim(g)),
        lambda g: (g != "") & (g != NO_GENRES),
    )
    return df.select(
        COL_SOURCE_FILE, COL_LINE_NO, COL_RAW, COL_REASON, _STATUS, COL_ITEM_ID,
        F.col("title").alias(COL_TITLE),
        genres.alias(COL_GENRES),
        F.when(year.rlike(r"^\d{4}$"), year.try_cast("int")).alias(COL_YEAR),
    )  # fmt: skip


def validate_users(parsed: DataFrame, numeric: bool) -> DataFrame:
    df = parsed.withColumn(
        COL_REASON,
        F.coalesce(
            F.col(COL_REASON),
            _first_reason(*_id_checks("user", "user", numeric), *_int_checks("age", "age", nullable=True)),
        ),
    ).withColumn(COL_USER_ID, canonical_id("user", numeric))
    df = _quarantine_duplicate_ids(df, COL_USER_ID, "user")
    blank_to_null = lambda c: F.when(F.trim(F.col(c)) != "", F.trim(F.col(c)))  # noqa: E731
    return df.select(
        COL_SOURCE_FILE, COL_LINE_NO, COL_RAW, COL_REASON, _STATUS, COL_USER_ID,
        blank_to_null("gender").alias(COL_GENDER),
        blank_to_null("age").try_cast("int").alias(COL_AGE),
        blank_to_null("occupation").alias(COL_OCCUPATION),
        blank_to_null("zip").alias(COL_ZIP),
    )  # fmt: skip


def _quarantine_duplicate_ids(df: DataFrame, id_col: str, what: str) -> DataFrame:
    """A side table lists each id once: later lines of the same id are quarantined."""
    w = Window.partitionBy(id_col, F.col(COL_REASON).isNull()).orderBy(COL_SOURCE_FILE, COL_LINE_NO)
    dup = F.col(COL_REASON).isNull() & (F.row_number().over(w) > 1)
    reason = F.when(dup, F.concat(F.lit(f"duplicate {what} id: "), _quoted(F.col(id_col)))).otherwise(
        F.col(COL_REASON)
    )
    df = df.withColumn(COL_REASON, reason)
    return df.withColumn(_STATUS, F.when(F.col(COL_REASON).isNull(), KEPT).otherwise(QUARANTINED))


def validate_events(
    parsed: DataFrame, numeric: bool | Mapping[str, bool], rating_scale: tuple[float, float] | None, decimal: str = "."
) -> DataFrame:
    """Typed rating (or tag) events with the first field-level ``reason``; no references yet.

    ``decimal`` is the ratings' decimal separator: with ``","`` a rating ``4,5`` reads as 4.5.
    """
    kinds = id_kinds(numeric)
    checks = [*_id_checks("user", "user", kinds["user"]), *_id_checks("item", "item", kinds["item"])]
    cols = [COL_SOURCE_FILE, COL_LINE_NO, COL_RAW]
    if rating_scale is not None:
        lo, hi = rating_scale
        r = F.trim(F.col("rating"))
        text = F.regexp_replace(r, r"^([+-]?\d*),(\d+)$", "$1.$2") if decimal == "," else r
        value = F.when(text.rlike(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"), text.try_cast("double"))
        comma = F.lit(" (a decimal comma?)") if decimal == "." else F.lit("")
        checks += [
            (r.isNull() | (r == ""), F.lit("missing rating")),
            (
                value.isNull() | F.isnan(value),
                F.concat(F.lit("unparsable rating: "), _quoted(r), F.when(r.rlike(r"^[+-]?\d+,\d+$"), comma).otherwise(F.lit(""))),
            ),
            (
                (value < lo) | (value > hi),
                F.concat(F.lit("rating outside the declared scale: "), r, F.lit(f" not in [{lo:g}, {hi:g}]")),
            ),
        ]
        cols.append(value.alias(COL_RATING))
    else:
        t = F.trim(F.col("tag"))
        checks.append((t.isNull() | (t == ""), F.lit("missing tag")))
        cols.append(t.alias(COL_TAG))
    checks += _int_checks("timestamp", "timestamp", nullable=True)
    ts = F.trim(F.col("timestamp"))
    cols.append(F.when(ts != "", ts.try_cast("long")).alias(COL_TIMESTAMP))
    reason = F.coalesce(F.col(COL_REASON), _first_reason(*checks))
    return parsed.select(
        *cols,
        canonical_id("user", kinds["user"]).alias(COL_USER_ID),
        canonical_id("item", kinds["item"]).alias(COL_ITEM_ID),
        reason.alias(COL_REASON),
    )


def _attach(df: DataFrame, id_map: DataFrame, id_col: str, idx_col: str, what: str, side: str) -> DataFrame:
    """Join the index; an id absent from the map is quarantined as unknown."""
    out = df.join(id_map, id_col, "left")
    unknown = F.col(COL_REASON).isNull() & F.col(idx_col).isNull()
    return out.withColumn(
        COL_REASON,
        F.when(unknown, F.concat(F.lit(f"unknown {what}: "), _quoted(F.col(id_col)), F.lit(f" is not in {side}"))).otherwise(
            F.col(COL_REASON)
        ),
    )


def _dedup_latest(df: DataFrame) -> DataFrame:
    """Status per event: duplicates of a (user, item) pair keep the latest (timestamp, then line)."""
    w = Window.partitionBy(COL_USER, COL_ITEM, F.col(COL_REASON).isNull()).orderBy(
        F.col(COL_TIMESTAMP).desc_nulls_last(), F.col(COL_SOURCE_FILE).desc(), F.col(COL_LINE_NO).desc()
    )
    status = (
        F.when(F.col(COL_REASON).isNotNull(), F.lit(QUARANTINED))
        .when(F.row_number().over(w) > 1, F.lit(DUPLICATE))
        .otherwise(F.lit(KEPT))
    )
    return df.withColumn(_STATUS, status)


def _status_only(df: DataFrame) -> DataFrame:
    return df.withColumn(_STATUS, F.when(F.col(COL_REASON).isNull(), KEPT).otherwise(QUARANTINED))


def _typed(df: DataFrame, schema) -> DataFrame:
    kept = df.where(F.col(_STATUS) == KEPT)
    return kept.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields])


def _quarantine_rows(df: DataFrame, table: str) -> DataFrame:
    return df.where(F.col(_STATUS) == QUARANTINED).select(
        F.lit(table).alias(COL_TABLE), COL_SOURCE_FILE, COL_LINE_NO, COL_RAW, COL_REASON
    )


def _count(df: DataFrame, read: int) -> dict:
    rows = (
        df.groupBy(_STATUS, F.substring_index(COL_REASON, ":", 1).alias("category")).count().collect()
    )  # a handful of (status, category) rows
    counts = {"read": read, KEPT: 0, QUARANTINED: 0, DUPLICATE: 0, "reasons": {}}
    for r in rows:
        counts[r[_STATUS]] += r["count"]
        if r["category"] is not None:
            counts["reasons"][r["category"]] = counts["reasons"].get(r["category"], 0) + r["count"]
    return counts


def ingest_tables(
    parsed: dict[str, tuple[DataFrame, int]],
    rating_scale: tuple[float, float],
    numeric_ids: bool | Mapping[str, bool] = True,
    decimal: str = ".",
) -> IngestResult:
    """Validate, map ids and deduplicate the parsed tables of one dataset.

    ``parsed`` maps table name (``ratings`` required; ``items``, ``users``,
    ``tags`` optional) to ``(parsed DataFrame, rows read)``.  When an items or
    users side table is present it defines the catalogue: ratings and tags that
    refer to an id it lacks are quarantined as unknown.  Without it, the ids
    seen in valid ratings (and tags) define the map.  ``numeric_ids``: one flag
    for both id columns or ``{"user": bool, "item": bool}`` (integer ids are
    checked and canonicalised, others kept as trimmed text); ``decimal``: the
    ratings' decimal separator.
    """
    kinds = id_kinds(numeric_ids)
    if "ratings" not in parsed:
        raise ValueError("a dataset needs a ratings table")
    classified: dict[str, DataFrame] = {}
    tables: dict[str, DataFrame] = {}
    level = StorageLevel.MEMORY_AND_DISK

    # side tables first: they define the catalogues
    items = users = None
    if "items" in parsed:
        items = validate_items(parsed["items"][0], kinds["item"]).persist(level)
        classified["items"] = items
    if "users" in parsed:
        users = validate_users(parsed["users"][0], kinds["user"]).persist(level)
        classified["users"] = users

    ratings = validate_events(parsed["ratings"][0], kinds, rating_scale, decimal)
    tags = validate_events(parsed["tags"][0], kinds, None) if "tags" in parsed else None

    def catalogue(side: DataFrame | None, id_col: str, idx_col: str, what: str) -> DataFrame:
        """Map ``id_col`` -> ``idx_col`` from the side table, else from valid events;
        then mark events whose id is not in it.  Items go first, so that a
        user seen only in ratings of unknown items gets no index."""
        nonlocal ratings, tags
        if side is not None:
            ids = side.where(F.col(_STATUS) == KEPT)
        else:
            ids = ratings.where(F.col(COL_REASON).isNull()).select(id_col)
            if tags is not None:
                ids = ids.unionByName(tags.where(F.col(COL_REASON).isNull()).select(id_col))
        id_map = build_id_map(ids, id_col, idx_col).persist(level)
        where = f"{what}s" if side is not None else f"the {what} map"
        ratings = _attach(ratings, id_map, id_col, idx_col, what, where)
        if tags is not None:
            tags = _attach(tags, id_map, id_col, idx_col, what, where)
        return id_map

    item_map = catalogue(items, COL_ITEM_ID, COL_ITEM, "item")
    user_map = catalogue(users, COL_USER_ID, COL_USER, "user")
    classified["ratings"] = _dedup_latest(ratings).persist(level)
    if tags is not None:
        classified["tags"] = _status_only(tags).persist(level)

    tables["ratings"] = _typed(classified["ratings"], RATINGS_SCHEMA)
    tables["user_map"] = user_map.select(*[F.col(f.name).cast(f.dataType) for f in USER_MAP_SCHEMA.fields])
    tables["item_map"] = item_map.select(*[F.col(f.name).cast(f.dataType) for f in ITEM_MAP_SCHEMA.fields])
    if items is not None:
        tables["items"] = _typed(items.join(item_map, COL_ITEM_ID), ITEMS_SCHEMA)
    else:  # catalogue known only from the ratings: ids without side information
        tables["items"] = item_map.select(
            F.col(COL_ITEM), F.col(COL_ITEM_ID), F.lit(None).cast("string").alias(COL_TITLE),
            F.array().cast("array<string>").alias(COL_GENRES), F.lit(None).cast("int").alias(COL_YEAR),
        )  # fmt: skip
    if users is not None:
        tables["users"] = _typed(users.join(user_map, COL_USER_ID), USERS_SCHEMA)
    else:
        tables["users"] = user_map.select(
            COL_USER, COL_USER_ID, *[F.lit(None).cast(f.dataType).alias(f.name) for f in USERS_SCHEMA.fields[2:]]
        )
    if tags is not None:
        tables["tags"] = _typed(classified["tags"], TAGS_SCHEMA)

    quarantine = None
    for name, df in classified.items():
        q = _quarantine_rows(df, name)
        quarantine = q if quarantine is None else quarantine.unionByName(q)
    quarantine = quarantine.select(*[F.col(f.name).cast(f.dataType) for f in QUARANTINE_SCHEMA.fields])

    counts = {name: _count(df, parsed[name][1]) for name, df in classified.items()}
    for name, c in counts.items():
        log.info(
            "%s: read %d, kept %d, quarantined %d, deduplicated %d %s",
            name, c["read"], c[KEPT], c[QUARANTINED], c[DUPLICATE], c["reasons"] or "",
        )  # fmt: skip
    return IngestResult(tables=tables, quarantine=quarantine, counts=counts)


def check_accounting(counts: dict[str, dict], max_quarantine_fraction: float, where: str, hints: Mapping[str, str] | None = None) -> None:
    """Raise :class:`IngestError` when rows went missing or too many were quarantined.

    ``hints`` maps a reason category to the setting that may fix it; the
    message carries the hints of the categories it lists.
    """
    for name, c in counts.items():
        total = c[KEPT] + c[QUARANTINED] + c[DUPLICATE]
        if total != c["read"]:
            raise IngestError(
                f"{name}: row accounting broken: read {c['read']} but kept {c[KEPT]} + quarantined "
                f"{c[QUARANTINED]} + deduplicated {c[DUPLICATE]} = {total}"
            )
        frac = c[QUARANTINED] / c["read"] if c["read"] else 0.0
        if frac > max_quarantine_fraction:
            top = sorted(c["reasons"].items(), key=lambda kv: -kv[1])[:5]
            raise IngestError(
                f"{name}: {c[QUARANTINED]} of {c['read']} rows ({frac:.1%}) were quarantined, above the "
                f"limit ingest.max_quarantine_fraction = {max_quarantine_fraction:g}; most common reasons: "
                + ", ".join(f"{k} ({v})" for k, v in top)
                + "".join(f"; {hints[k]}" for k, _ in top if hints and k in hints)
                + f". The rejected rows with file, line and reason are in {where} (raise the limit to keep going)"
            )
