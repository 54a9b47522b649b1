"""Reading raw text with provenance, and contiguous indexing, all inside the JVM.

``read_lines`` returns ``(source_file, line_no, raw)`` for every line of a file
or a directory of part files, with 1-based line numbers per file, so that a
bad row can be reported by file and line.  Line numbers come from
``monotonically_increasing_id`` plus per-(file, partition) offsets; the offsets
are a tiny aggregate (one row per file chunk), so nothing proportional to the
data reaches the driver and no Python worker touches the rows.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

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
    # order).  Offsets: rows of the same file in earlier partitions.  The scan
    # is deterministic, so the two passes over it see the same partitions.
    chunks = df.groupBy(COL_SOURCE_FILE, _PID).agg(F.min(_MID).alias("_first"), F.count("*").alias("_n"))
    w = Window.partitionBy(COL_SOURCE_FILE).orderBy(_PID).rowsBetween(Window.unboundedPreceding, -1)
    chunks = chunks.withColumn("_offset", F.coalesce(F.sum("_n").over(w), F.lit(0))).drop("_n")
    out = df.join(F.broadcast(chunks), [COL_SOURCE_FILE, _PID]).select(
        COL_SOURCE_FILE,
        (F.col("_offset") + F.col(_MID) - F.col("_first") + 1).alias(COL_LINE_NO),
        COL_RAW,
    )
    return out


def with_contiguous_index(df: DataFrame, order_cols: list, name: str) -> DataFrame:
    """Add ``name``: 0..n-1 in the order of ``order_cols`` (an int32 column).

    A global sort then per-partition offsets; scales to any number of rows
    without gathering them in one partition.
    """
    ordered = df.orderBy(*order_cols).select(
        "*", F.spark_partition_id().alias(_PID), F.monotonically_increasing_id().alias(_MID)
    ).persist()
    parts = ordered.groupBy(_PID).agg(F.min(_MID).alias("_first"), F.count("*").alias("_n"))
    w = Window.orderBy(_PID).rowsBetween(Window.unboundedPreceding, -1)
    parts = parts.withColumn("_offset", F.coalesce(F.sum("_n").over(w), F.lit(0))).drop("_n")
    return ordered.join(F.broadcast(parts), _PID).select(
        *[c for c in df.columns],
        (F.col("_offset") + F.col(_MID) - F.col("_first")).cast("int").alias(name),
    )


def path_exists(spark: SparkSession, path: str) -> bool:
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    fs = hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    return bool(fs.exists(hpath))
