"""Content checksums of a pipeline's outputs: did two runs write the same thing?

:func:`table_checksum` hashes each row of a table (``xxhash64`` over every
column) and adds the hashes up: the same multiset of rows gives the same
checksum whatever the row order, the number of files or the partitioning, as a
checksum of the sorted rows would, without sorting.  Floating-point columns
(also inside arrays and structs) can be rounded to ``decimals`` places first,
for runs whose sums are added in another order (another partitioning, another
cluster): the tolerance is then stated by the caller, and exact comparison is
``decimals=None``.

:func:`output_checksums` walks a run's output folder (any Hadoop file system):
every Spark table (a folder with ``_SUCCESS``) is read and hashed; every other
file is hashed by its bytes, except the files that record a run rather than its
result (:data:`VOLATILE_FILES`: manifests with their timings and ids, the
MLflow store, logs, and the Markdown/HTML/PNG renderings of a JSON result);
a JSON file is hashed without its volatile keys (:data:`VOLATILE_COLUMNS`:
durations, moments, run ids), as a table is without such columns.  :func:`compare` lists what differs between two walks.

    recsys-spark checksum --config conf/local.toml --out build/run1.json
    recsys-spark checksum --config conf/local.toml --against build/run1.json
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import re
import tempfile
from typing import Any

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark.io import fs

log = logging.getLogger(__name__)

# a run's own temporary folder named in a result (a deep model's training checkpoint)
_TMP = re.compile(re.escape(tempfile.gettempdir().rstrip("/")) + r"/[^/\s]+")
# MLlib names every stage it saves by a random uid (``IDF_97da8639f436``), in folder names and in
# the metadata JSON beside a timestamp: compared without them
_UID = re.compile(r"([A-Za-z]+)_[0-9a-f]{12}(?![0-9A-Za-z])")

# files that describe a run, not its result: never compared
VOLATILE_FILES = (
    "_manifest.json", "*.crc", "_SUCCESS", "*.log", "*/mlruns/*", "*/mlflow/*", "*/checkpoints/*",
    "*.tmp-*", "*.old-*", "*.rejected/*",
    # renderings of a JSON result that is compared itself (results.json): they print timings
    "*.md", "*.html", "*.png",
)  # fmt: skip
# columns and JSON keys that hold a duration, a moment or a cost of the run, or what is computed from
# the measured costs: evaluate's costs, the selection's latencies, its Pareto front over accuracy and
# cost, the tests against the front's models and the rationale that quotes them
VOLATILE_COLUMNS = (
    "*_s", "wall*", "created*", "seconds", "*_seconds", "*throughput*", "*per_s*", "*_per_1k*", "latency*", "memory*", "*_mb", "*_bytes",
    "costs", "rationale", "pareto_front", "tests_against_leader", "mlflow_run_id", "run_id", "*_uri", "output_id",
)  # fmt: skip


def _normalized(col: Column, dtype: T.DataType, decimals: int | None) -> Column:
    """``col`` with floats rounded (when ``decimals`` is set) and maps as sorted entry arrays (hashable)."""
    if isinstance(dtype, (T.DoubleType, T.FloatType)):
        # -0.0 and 0.0 hash apart; a NaN is a NaN
        return F.round(col.cast("double"), decimals) + F.lit(0.0) if decimals is not None else col + F.lit(0.0)
    if isinstance(dtype, T.ArrayType):
        return F.transform(col, lambda x: _normalized(x, dtype.elementType, decimals))
    if isinstance(dtype, T.MapType):
        entries = T.ArrayType(T.StructType([T.StructField("key", dtype.keyType), T.StructField("value", dtype.valueType)]))
        return _normalized(F.array_sort(F.map_entries(col)), entries, decimals)
    if isinstance(dtype, T.StructType):
        return F.struct(*[_normalized(col[f.name], f.dataType, decimals).alias(f.name) for f in dtype.fields])
    if isinstance(dtype, T.UserDefinedType):
        if dtype.typeName() == "vector" or type(dtype).__name__ == "VectorUDT":  # MLlib vectors: as dense arrays
            from pyspark.ml.functions import vector_to_array

            return _normalized(vector_to_array(col), T.ArrayType(T.DoubleType()), decimals)
        return col  # another UDT: hashed as stored
    return col


def _volatile(name: str) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in VOLATILE_COLUMNS)


def table_checksum(df: DataFrame, decimals: int | None = None, skip_volatile: bool = True) -> dict[str, Any]:
    """``{"rows", "checksum", "columns"}`` of ``df``: an order-independent hash of its rows (see the module docstring)."""
    fields = [f for f in df.schema.fields if not (skip_volatile and _volatile(f.name))]
    if not fields:
        return {"rows": df.count(), "checksum": "0", "columns": []}
    cols = [_normalized(F.col(f"`{f.name}`"), f.dataType, decimals) for f in sorted(fields, key=lambda f: f.name)]
    # a sum of 64-bit hashes as a decimal: no overflow (ANSI mode would raise on a long), no wrap-around
    row = df.select(F.xxhash64(*cols).cast("decimal(38,0)").alias("h")).agg(F.count(F.lit(1)).alias("n"), F.sum("h").alias("s")).first()
    return {"rows": int(row["n"]), "checksum": str(row["s"] if row["s"] is not None else 0), "columns": [f.name for f in fields]}


def _files(spark: SparkSession, root: str) -> list[str]:
    """Every file under ``root`` as a path relative to it (sorted)."""
    if not fs.exists(spark, root):
        raise FileNotFoundError(f"{root}: no such output folder")
    return sorted(rel for rel, _, _ in fs.walk(spark, root))


def _sha256(spark: SparkSession, path: str) -> str:
    digest = hashlib.sha256()
    local = path.removeprefix("file:") if path.startswith(("/", "file:/")) else None
    if local is not None:  # read in 1 MiB pieces: a model's weights can be large
        with open(local, "rb") as f:
            for piece in iter(lambda: f.read(1 << 20), b""):
                digest.update(piece)
        return digest.hexdigest()
    digest.update(fs.read_bytes(spark, path))  # another file system: whole (the non-table files are results and weights)
    return digest.hexdigest()


def _stable_json(value: Any, decimals: int | None, root: str | None = None) -> Any:
    """A JSON value without its volatile keys, floats rounded, the run's own folder written ``<root>``.

    What :func:`output_checksums` hashes of a JSON file: two runs into different folders name
    their inputs by different absolute paths.
    """
    if isinstance(value, dict):
        return {k: _stable_json(v, decimals, root) for k, v in sorted(value.items()) if not _volatile(str(k))}
    if isinstance(value, list):
        return [_stable_json(v, decimals, root) for v in value]
    if isinstance(value, float) and decimals is not None:
        return round(value, decimals) + 0.0
    if isinstance(value, str):
        # and a temporary folder of the run (a deep model's training checkpoint) as <tmp>
        return _TMP.sub("<tmp>", value.replace(root, "<root>") if root else value)
    return value


def _is_volatile_file(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch("/" + rel, p) for p in VOLATILE_FILES)


def output_checksums(spark: SparkSession, root: str, decimals: int | None = None) -> dict[str, dict[str, Any]]:
    """Checksums of every table and file under ``root``, keyed by relative path (see the module docstring)."""
    files = _files(spark, root)
    tables = sorted({f.rsplit("/", 1)[0] if "/" in f else "" for f in files if f.endswith("/_SUCCESS") or f == "_SUCCESS"})
    out: dict[str, dict[str, Any]] = {}
    for t in tables:
        if _is_volatile_file(t + "/x"):
            continue
        path = f"{root.rstrip('/')}/{t}"
        data = [f for f in files if f.startswith(t + "/") and not _is_volatile_file(f)]
        if any(f.endswith(".parquet") for f in data):
            df = spark.read.parquet(path)
        else:  # the generate stage's raw CSV, MLlib's metadata: compared as text lines (MLlib's without uids, times)
            value = F.regexp_replace(F.regexp_replace("value", r'"timestamp":[0-9]+,?', ""), _UID.pattern, "$1")
            df = spark.read.text(path).select(value.alias("value"))
        out[_UID.sub(r"\1", t)] = {"kind": "table", **table_checksum(df, decimals)}
    in_tables = tuple(t + "/" for t in tables)
    for f in files:
        if f.startswith(in_tables) or _is_volatile_file(f):
            continue
        path = f"{root.rstrip('/')}/{f}"
        if f.endswith(".json"):
            bare = root.rstrip("/").removeprefix("file:")
            text = json.dumps(_stable_json(json.loads(fs.read_text(spark, path)), decimals, bare), sort_keys=True)
            out[_UID.sub(r"\1", f)] = {"kind": "json", "sha256": hashlib.sha256(text.encode()).hexdigest()}
        else:
            out[_UID.sub(r"\1", f)] = {"kind": "file", "sha256": _sha256(spark, path)}
    log.info("checksums of %d tables and %d files under %s", sum(v["kind"] == "table" for v in out.values()),
             sum(v["kind"] == "file" for v in out.values()), root)  # fmt: skip
    return out


def compare(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]], ignore: tuple[str, ...] = ()) -> list[str]:
    """What differs between two :func:`output_checksums` results (one line each; [] when they agree).

    ``ignore``: glob patterns of relative paths left out, each a stated
    exception (a model that is not deterministic by nature, say).
    """
    def kept(path: str) -> bool:
        return not any(fnmatch.fnmatch(path, p) for p in ignore)

    diffs = []
    for path in sorted(set(a) | set(b)):
        if not kept(path):
            continue
        if path not in a or path not in b:
            diffs.append(f"{path}: only in the {'second' if path in b else 'first'} run")
        elif a[path] != b[path]:
            diffs.append(f"{path}: {a[path]} != {b[path]}")
    return diffs
