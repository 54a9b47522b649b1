"""Checks of a dataset's local input files before a Spark session starts.

A missing or unreadable file, an empty folder, a 0-byte or non-Parquet file, a
header that does not match the column mapping (or a header where none is
declared) fail here in well under a second, with the same messages the
Spark-side reader gives (:func:`recsys_spark.io.datasets.resolve_columns`
runs on the first two lines of each file).  Paths on another file system
(``hdfs://``, ``s3a://``, ``dbfs:/``) are left to the Spark-side checks.
"""

from __future__ import annotations

import bz2
import gzip
import os
from pathlib import Path

from recsys_spark.io.datasets import DataFormatError, DatasetSpec, FileSpec, is_local, resolve_columns

MAX_PART_FILES = 64  # a folder of part files: the first this many are opened


def local_path(path: str) -> Path:
    """The file-system path of a local URI (``file:///x``, ``file:/x`` or a plain path)."""
    if path.startswith("file://"):
        return Path(path[len("file://") :])
    if path.startswith("file:"):
        return Path(path[len("file:") :])
    return Path(path)


def data_files(folder: Path) -> list[Path]:
    """The files Spark reads from a folder: not recursive, names starting with '_' or '.' skipped."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(("_", ".")))


def check_inputs(spec: DatasetSpec) -> None:
    """Raise ``FileNotFoundError`` or :class:`DataFormatError` for the first bad local input of ``spec``."""
    local = {table: f for table, f in spec.files.items() if is_local(f.path)}
    missing = [str(local_path(f.path)) for f in local.values() if not local_path(f.path).exists()]
    if missing:  # every missing file at once, worded as the Spark-side reader words it
        raise FileNotFoundError(f"dataset {spec.name!r} ({spec.kind}): input file(s) not found: {', '.join(missing)}")
    for table, f in local.items():
        check_file(spec, table, f)


def check_file(spec: DatasetSpec, table: str, f: FileSpec) -> None:
    path = local_path(f.path)
    if not path.exists():
        raise FileNotFoundError(f"dataset {spec.name!r} ({spec.kind}): input file(s) not found: {path}")
    files = [path] if path.is_file() else data_files(path)
    if not files:
        raise DataFormatError(f"{path}: the folder has no data files (names starting with '_' or '.' are skipped)")
    stats = []
    for p in files[:MAX_PART_FILES]:
        if not os.access(p, os.R_OK):
            raise DataFormatError(f"{p}: cannot be read (permission denied for this user)")
        if f.fmt == "parquet":
            _check_parquet(p)
            continue
        lines = _first_lines(p, f.encoding, 2)
        if lines:
            stats.append({"source_file": str(p), "n": len(lines), "first": lines[0], "first_data": _first_data(lines, f)})
    if f.fmt != "parquet" and (stats or len(files) <= MAX_PART_FILES):
        resolve_columns(f, stats, table)


def _first_data(lines: list[str], f: FileSpec) -> str | None:
    i = 1 if f.header is not None else 0
    return lines[i] if len(lines) > i else None


def _check_parquet(p: Path) -> None:
    size = p.stat().st_size
    if size == 0:
        raise DataFormatError(f"{p}: 0 bytes, not a Parquet file (an interrupted write?)")
    with open(p, "rb") as fh:
        head = fh.read(4)
        fh.seek(max(size - 4, 0))
        tail = fh.read(4)
    if head != b"PAR1" or tail != b"PAR1":
        raise DataFormatError(f"{p}: not a Parquet file (no PAR1 magic at its start and end); is dataset.generic.format right?")


def _first_lines(p: Path, encoding: str, n: int) -> list[str]:
    """The first ``n`` lines of a text file (gzip and bzip2 by suffix, as Hadoop decides), without line ends."""
    opener = gzip.open if p.suffix == ".gz" else bz2.open if p.suffix == ".bz2" else open
    enc = "utf-8-sig" if encoding.upper().replace("_", "-") in ("UTF-8", "UTF8") else encoding
    try:
        with opener(p, "rb") as fh:
            raw = [fh.readline(1 << 20) for _ in range(n)]
    except OSError as exc:  # a truncated or mislabelled .gz, an I/O error
        raise DataFormatError(f"{p}: cannot be read ({exc})") from exc
    out = []
    for b in raw:
        if not b:
            break
        try:
            text = b.decode(enc)
        except (UnicodeDecodeError, LookupError):
            text = b.decode("latin-1")  # the Spark-side reader decides on the encoding; here only the shape counts
        out.append(text.rstrip("\n").rstrip("\r"))
        if len(out) == 1 and enc == "utf-8-sig":
            enc = "utf-8"
    return out
