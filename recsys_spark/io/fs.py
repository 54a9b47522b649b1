"""File-system helpers over Hadoop's FileSystem API (local, HDFS, S3, DBFS alike).

Outputs are written atomically: a stage writes everything into a temporary
sibling directory and renames it into place at the end, so a killed job never
leaves half an output that a rerun would take for a finished one; the next run
removes what a killed one left (:func:`recover`).

A classic session reaches storage through the driver JVM's Hadoop FileSystem
(so every file system Spark is configured for works, with its credentials).  A
Spark Connect client has no JVM: it reaches the same storage through pyarrow's
file systems (local disk, S3, GCS, HDFS), so the client and the Connect server
must see the same paths (the same machine, or a shared store; docs/connect.md).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from collections.abc import Iterator
from typing import Any

from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"


def is_connect(spark: SparkSession) -> bool:
    """True for a Spark Connect session (no driver JVM in this process, no RDDs)."""
    try:
        from pyspark.sql.connect.session import SparkSession as ConnectSession
    except ImportError:  # the connect extras are missing: it cannot be one
        return False
    return isinstance(spark, ConnectSession)


class _Hadoop:
    """Through the driver JVM: ``org.apache.hadoop.fs.FileSystem``."""

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark
        self.jvm = spark.sparkContext._jvm

    def _fs(self, path: str):
        hpath = self.jvm.org.apache.hadoop.fs.Path(path)
        return hpath.getFileSystem(self.spark.sparkContext._jsc.hadoopConfiguration()), hpath

    def exists(self, path: str) -> bool:
        fs, hpath = self._fs(path)
        return bool(fs.exists(hpath))

    def walk(self, path: str) -> list[tuple[str, int, int]]:
        fs, hpath = self._fs(path)
        if not fs.exists(hpath):
            return []
        base = fs.makeQualified(hpath).toString().rstrip("/") + "/"
        it = fs.listFiles(hpath, True)
        out = []
        while it.hasNext():
            st = it.next()
            out.append((st.getPath().toString()[len(base):], int(st.getLen()), int(st.getModificationTime())))
        return out

    def children(self, path: str) -> list[tuple[str, int]]:
        fs, hpath = self._fs(path)
        if not fs.exists(hpath):
            return []
        return [(st.getPath().getName(), int(st.getModificationTime())) for st in fs.listStatus(hpath)]

    def delete(self, path: str) -> None:
        fs, hpath = self._fs(path)
        if fs.exists(hpath):
            fs.delete(hpath, True)

    def rename(self, src: str, dst: str) -> bool:
        fs, hsrc = self._fs(src)
        _, hdst = self._fs(dst)
        parent = hdst.getParent()
        if parent is not None and not fs.exists(parent):
            fs.mkdirs(parent)
        return bool(fs.rename(hsrc, hdst))

    def write_bytes(self, path: str, data: bytes) -> None:
        fs, hpath = self._fs(path)
        out = fs.create(hpath, True)
        try:
            out.write(bytearray(data))
        finally:
            out.close()

    def read_bytes(self, path: str) -> bytes:
        fs, hpath = self._fs(path)
        stream = fs.open(hpath)
        try:
            return bytes(self.jvm.org.apache.commons.io.IOUtils.toByteArray(stream))
        finally:
            stream.close()

    def copy_from_local(self, local_path: str, path: str) -> None:
        fs, hpath = self._fs(path)
        fs.copyFromLocalFile(False, True, self.jvm.org.apache.hadoop.fs.Path(local_path), hpath)


def _hadoop_crc(name: str) -> bool:
    """A checksum file of Hadoop's local file system (``.part-0.crc``), which its listings hide."""
    return name.startswith(".") and name.endswith(".crc")


class _Arrow:
    """Through ``pyarrow.fs`` (a Spark Connect client): a path without a scheme is on the local disk."""

    def _fs(self, path: str):
        from pyarrow import fs as pafs

        if "://" not in path:
            return pafs.LocalFileSystem(), os.path.abspath(path.removeprefix("file:"))
        return pafs.FileSystem.from_uri(path)

    def _info(self, path: str):
        fs, p = self._fs(path)
        return fs, p, fs.get_file_info(p)

    def exists(self, path: str) -> bool:
        from pyarrow import fs as pafs

        return self._info(path)[2].type != pafs.FileType.NotFound

    def walk(self, path: str) -> list[tuple[str, int, int]]:
        from pyarrow import fs as pafs

        fs, p, info = self._info(path)
        if info.type == pafs.FileType.NotFound:
            return []
        base = p.rstrip("/") + "/"
        found = fs.get_file_info(pafs.FileSelector(p, recursive=True))
        return [(f.path[len(base):], int(f.size), int(f.mtime_ns // 1_000_000)) for f in found
                if f.type == pafs.FileType.File and not _hadoop_crc(f.base_name)]  # fmt: skip

    def children(self, path: str) -> list[tuple[str, int]]:
        from pyarrow import fs as pafs

        fs, p, info = self._info(path)
        if info.type == pafs.FileType.NotFound:
            return []
        return [(f.base_name, int(f.mtime_ns // 1_000_000)) for f in fs.get_file_info(pafs.FileSelector(p)) if not _hadoop_crc(f.base_name)]

    def delete(self, path: str) -> None:
        from pyarrow import fs as pafs

        fs, p, info = self._info(path)
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(p)
        elif info.type != pafs.FileType.NotFound:
            fs.delete_file(p)

    def rename(self, src: str, dst: str) -> bool:
        fs, s = self._fs(src)
        _, d = self._fs(dst)
        parent = d.rstrip("/").rsplit("/", 1)[0]
        if parent:
            fs.create_dir(parent, recursive=True)
        fs.move(s, d)
        return True

    def write_bytes(self, path: str, data: bytes) -> None:
        fs, p = self._fs(path)
        parent = p.rstrip("/").rsplit("/", 1)[0]
        if parent:
            fs.create_dir(parent, recursive=True)
        with fs.open_output_stream(p) as out:
            out.write(data)

    def read_bytes(self, path: str) -> bytes:
        fs, p = self._fs(path)
        with fs.open_input_stream(p) as f:
            return f.read()

    def copy_from_local(self, local_path: str, path: str) -> None:
        with open(local_path, "rb") as f:
            self.write_bytes(path, f.read())


def backend(spark: SparkSession) -> _Hadoop | _Arrow:
    """The file-system access of ``spark``'s kind of session."""
    return _Arrow() if is_connect(spark) else _Hadoop(spark)


def exists(spark: SparkSession, path: str) -> bool:
    return backend(spark).exists(path)


def list_files(spark: SparkSession, path: str) -> list[tuple[str, int, int]]:
    """``(name, size, mtime)`` of every file under ``path``, recursively; [] when it does not exist."""
    return [(rel.rsplit("/", 1)[-1], size, mtime) for rel, size, mtime in backend(spark).walk(path)]


def walk(spark: SparkSession, path: str) -> list[tuple[str, int, int]]:
    """``(path relative to path, size, mtime)`` of every file under ``path``, recursively; [] when it does not exist."""
    return backend(spark).walk(path)


def delete(spark: SparkSession, path: str) -> None:
    backend(spark).delete(path)


def rename(spark: SparkSession, src: str, dst: str) -> None:
    if not backend(spark).rename(src, dst):
        raise OSError(f"could not rename {src} to {dst}")


def write_text(spark: SparkSession, path: str, text: str) -> None:
    backend(spark).write_bytes(path, text.encode("utf-8"))


def copy_from_local(spark: SparkSession, local_path: str, path: str) -> None:
    """Copy a file written on the driver's local disk (e.g. a plot) to ``path`` (any file system)."""
    backend(spark).copy_from_local(local_path, path)


def read_text(spark: SparkSession, path: str) -> str:
    return backend(spark).read_bytes(path).decode("utf-8")


def read_bytes(spark: SparkSession, path: str) -> bytes:
    return backend(spark).read_bytes(path)


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
    out = output.rstrip("/")
    if "/" not in out:
        out = f"./{out}"
    parent, name = out.rsplit("/", 1)
    prefix = f"{name}.{kind}-"
    found = [(n, mtime) for n, mtime in backend(spark).children(parent or "/") if n.startswith(prefix)]
    return [f"{parent}/{n}" for n, _ in sorted(found, key=lambda t: -t[1])]


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
