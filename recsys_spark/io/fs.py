"""File-system helpers over Hadoop's FileSystem API (local, HDFS, S3, DBFS alike).

Outputs are written atomically: a stage writes everything into a temporary
sibling directory and renames it into place at the end, so a killed job never
leaves half an output that a rerun would take for a finished one; the next run
removes what a killed one left (:func:`recover`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"


def _fs(spark: SparkSession, path: str):
    jvm = spark.sparkContext._jvm
    hpath = jvm.org.apache.hadoop.fs.Path(path)
    return hpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), hpath


def exists(spark: SparkSession, path: str) -> bool:
    fs, hpath = _fs(spark, path)
    return bool(fs.exists(hpath))


def list_files(spark: SparkSession, path: str) -> list[tuple[str, int, int]]:
    """``(name, size, mtime)`` of every file under ``path``, recursively; [] when it does not exist."""
    fs, hpath = _fs(spark, path)
    if not fs.exists(hpath):
        return []
    it = fs.listFiles(hpath, True)
    entries = []
    while it.hasNext():
        st = it.next()
        entries.append((st.getPath().getName(), int(st.getLen()), int(st.getModificationTime())))
    return entries


def delete(spark: SparkSession, path: str) -> None:
    fs, hpath = _fs(spark, path)
    if fs.exists(hpath):
        fs.delete(hpath, True)


def rename(spark: SparkSession, src: str, dst: str) -> None:
    fs, hsrc = _fs(spark, src)
    _, hdst = _fs(spark, dst)
    parent = hdst.getParent()
    if parent is not None and not fs.exists(parent):
        fs.mkdirs(parent)
    if not fs.rename(hsrc, hdst):
        raise OSError(f"could not rename {src} to {dst}")


def write_text(spark: SparkSession, path: str, text: str) -> None:
    fs, hpath = _fs(spark, path)
    out = fs.create(hpath, True)
    try:
        out.write(bytearray(text.encode("utf-8")))
    finally:
        out.close()


def copy_from_local(spark: SparkSession, local_path: str, path: str) -> None:
    """Copy a file written on the driver's local disk (e.g. a plot) to ``path`` (any file system)."""
    fs, hpath = _fs(spark, path)
    jvm = spark.sparkContext._jvm
    fs.copyFromLocalFile(False, True, jvm.org.apache.hadoop.fs.Path(local_path), hpath)


def read_text(spark: SparkSession, path: str) -> str:
    fs, hpath = _fs(spark, path)
    jvm = spark.sparkContext._jvm
    stream = fs.open(hpath)
    try:
        return jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
    finally:
        stream.close()


def write_json(spark: SparkSession, path: str, payload: Any) -> None:
    write_text(spark, path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def read_manifest(spark: SparkSession, output: str) -> dict[str, Any] | None:
    """The manifest of a finished output, or None when there is none."""
    path = f"{output}/{MANIFEST}"
    if not exists(spark, path):
        return None
    return json.loads(read_text(spark, path))


def _siblings(spark: SparkSession, output: str, kind: str) -> list[str]:
    """``output``'s leftover ``.tmp-*`` or ``.old-*`` siblings (paths), newest first.

    Listed from the parent folder and matched by name, not by a glob: a path with ``[`` or
    ``{`` in it (a pytest folder of a parametrized test, say) would be a pattern.
    """
    fs, hpath = _fs(spark, output.rstrip("/"))
    parent = hpath.getParent()
    if parent is None or not fs.exists(parent):
        return []
    prefix = f"{hpath.getName()}.{kind}-"
    found = [st for st in fs.listStatus(parent) if st.getPath().getName().startswith(prefix)]
    return [st.getPath().toString() for st in sorted(found, key=lambda st: -int(st.getModificationTime()))]


def recover(spark: SparkSession, output: str) -> dict[str, int]:
    """Clean up after a run killed while writing ``output`` (see :func:`atomic_output`); counts of what was done.

    A ``.tmp-*`` sibling is an unfinished write: deleted.  An ``.old-*`` sibling
    with no ``output`` beside it is a finished output caught between the two
    renames of the swap: renamed back (its manifest then says whether it is up
    to date); with ``output`` present it is the replaced one: deleted.  Runs
    writing the same output at the same time are not supported (each would
    delete the other's temporary folder).
    """
    done = {"tmp_deleted": 0, "old_restored": 0, "old_deleted": 0}
    for tmp in _siblings(spark, output, "tmp"):
        delete(spark, tmp)
        done["tmp_deleted"] += 1
    for old in _siblings(spark, output, "old"):
        if not exists(spark, output) and exists(spark, f"{old}/{MANIFEST}"):
            rename(spark, old, output)
            done["old_restored"] += 1
        else:
            delete(spark, old)
            done["old_deleted"] += 1
    if any(done.values()):
        log.warning("%s: a killed run's leftovers cleaned up: %s", output, done)
    return done


@contextlib.contextmanager
def atomic_output(spark: SparkSession, output: str) -> Iterator[str]:
    """Yield a temporary directory; on success replace ``output`` with it.

    The temporary directory sits beside ``output`` (same file system, so the
    rename is cheap); on failure it is removed and ``output`` is untouched.
    """
    tmp = f"{output.rstrip('/')}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
    except BaseException:
        delete(spark, tmp)
        raise
    old = f"{output.rstrip('/')}.old-{uuid.uuid4().hex[:8]}"
    had_old = exists(spark, output)
    if had_old:
        rename(spark, output, old)
    rename(spark, tmp, output)
    if had_old:
        delete(spark, old)
    log.info("wrote %s", output)
