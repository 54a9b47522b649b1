"""Reading raw text with provenance, and contiguous indexing, all inside the JVM.

``read_lines`` returns ``(source_file, line_no, raw)`` for every line of a file
or a directory of part files, with 1-based line numbers per file, so that a
bad row can be reported by file and line.  Line numbers come from
``monotonically_increasing_id`` plus per-(file, partition) offsets; the offsets
are a tiny aggregate (one row per file chunk), so nothing proportional to the
data reaches the driver and no Python worker touches the rows.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark.io.fs import exists as path_exists
from recsys_spark.schemas import COL_LINE_NO, COL_RAW, COL_SOURCE_FILE

_PID = "_pid"
_MID = "_mid"


def read_lines(spark: SparkSession, path: str, encoding: str = "UTF-8") -> DataFrame:
    """Lines of ``path`` (a file or a directory of part files) with file and line number.

    Text is read as bytes and decoded with ``encoding`` (ISO-8859-1 files such
    as the original ml-100k ``u.item`` decode correctly).  A missing path raises
    ``FileNotFoundError`` naming it.
    """
    if not path_exists(spark, path):
        raise FileNotFoundError(f"input file {path} does not exist")
    df = spark.read.option("recursiveFileLookup", "false").text(path)
    value = F.col("value")
    if encoding.upper().replace("_", "-") not in ("UTF-8", "UTF8"):
        value = F.decode(F.col("value").cast("binary"), encoding)
    df = df.select(
        F.input_file_name().alias(COL_SOURCE_FILE),
        F.regexp_replace(value, "\r$", "").alias(COL_RAW),
        F.spark_partition_id().alias(_PID),
        F.monotonically_increasing_id().alias(_MID),
    )
    return _number_within_files(df)


def _number_within_files(df: DataFrame) -> DataFrame:
    # Within one partition rows keep file order; a file split into several
    # chunks has its chunks in partition order (Spark packs splits in offset
    # order).  Offset of a chunk: rows of the same file in earlier partitions.
    # The scan is deterministic, so both passes over it see the same partitions.
    spark = df.sparkSession
    chunks = df.groupBy(COL_SOURCE_FILE, _PID).agg(F.min(_MID).alias("_first"), F.count("*").alias("_n"))
    rows = sorted(chunks.collect(), key=lambda r: (r[COL_SOURCE_FILE], r[_PID]))  # one row per file chunk
    offsets, seen = [], {}
    for r in rows:
        done = seen.get(r[COL_SOURCE_FILE], 0)
        offsets.append((r[COL_SOURCE_FILE], r[_PID], r["_first"], done))
        seen[r[COL_SOURCE_FILE]] = done + r["_n"]
    table = spark.createDataFrame(
        offsets, f"{COL_SOURCE_FILE} string, {_PID} int, _first long, _offset long"
    )
    return df.join(F.broadcast(table), [COL_SOURCE_FILE, _PID]).select(
        COL_SOURCE_FILE,
        (F.col("_offset") + F.col(_MID) - F.col("_first") + 1).alias(COL_LINE_NO),
        COL_RAW,
    )


def with_contiguous_index(df: DataFrame, order_cols: list, name: str) -> DataFrame:
    """Add ``name``: 0..n-1 in the order of ``order_cols`` (an int32 column).

    A global sort then per-partition offsets (one small row per partition
    reaches the driver); scales to any number of rows without gathering them
    in one partition.  ``order_cols`` must order the rows uniquely.
    """
    spark = df.sparkSession
    ordered = df.orderBy(*order_cols).select(
        "*", F.spark_partition_id().alias(_PID), F.monotonically_increasing_id().alias(_MID)
    ).persist()
    parts = ordered.groupBy(_PID).agg(F.min(_MID).alias("_first"), F.count("*").alias("_n")).collect()
    offsets, done = [], 0
    for r in sorted(parts, key=lambda r: r[_PID]):
        offsets.append((r[_PID], r["_first"], done))
        done += r["_n"]
    table = spark.createDataFrame(offsets, f"{_PID} int, _first long, _offset long")
    return ordered.join(F.broadcast(table), _PID).select(
        *df.columns,
        (F.col("_offset") + F.col(_MID) - F.col("_first")).cast("int").alias(name),
    )
