"""Manifests: what makes a stage's output up to date, and the runner that writes it atomically.

Beside every output sits ``_manifest.json``: the hash of the config sections
the stage depends on, fingerprints of its inputs, row accounting and timings.
A stage whose manifest matches the current config and inputs is skipped;
``force=True`` reruns it.  A rerun gives its output a new id, so the stages
that read it rerun too.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from recsys_spark import __version__, faults
from recsys_spark.config import Config
from recsys_spark.io import fs
from recsys_spark.spark import ClassicSessionRequired

log = logging.getLogger(__name__)


STAGE_PROPERTY = "recsys.stage"  # a local property: the pipeline stage of every Spark job (event log, listeners)


@contextlib.contextmanager
def tagged(spark: SparkSession, stage: str) -> Iterator[None]:
    """Tag the Spark jobs run inside with ``recsys.stage`` = ``stage`` (benchmarks/scale.py reads it from the event log)."""
    if fs.is_connect(spark):
        yield
        return
    sc = spark.sparkContext
    before = sc.getLocalProperty(STAGE_PROPERTY)
    sc.setLocalProperty(STAGE_PROPERTY, stage)
    try:
        yield
    finally:
        sc.setLocalProperty(STAGE_PROPERTY, before)  # type: ignore[arg-type]  # None removes it


@contextlib.contextmanager
def classic_needed(spark: SparkSession, stage: str) -> Iterator[None]:
    """Turn "no SparkContext here" on a Spark Connect session into one error naming the stage."""
    from pyspark.errors import PySparkAttributeError, PySparkNotImplementedError

    try:
        yield
    except ClassicSessionRequired as exc:
        raise ClassicSessionRequired(f"{stage}: {exc}") from None
    except (PySparkAttributeError, PySparkNotImplementedError) as exc:
        if not fs.is_connect(spark):
            raise
        raise ClassicSessionRequired(
            f"{stage} needs a classic Spark session, and this is a Spark Connect one ({str(exc).split('. ')[0]}); "
            "run it without [spark] remote / $SPARK_REMOTE (docs/connect.md)"
        ) from exc


def fingerprint(spark: SparkSession, path: str) -> str:
    """Hash of an input: its manifest's id for a stage output, else file names, sizes and mtimes."""
    manifest = fs.read_manifest(spark, path)
    if manifest is not None and "output_id" in manifest:
        return manifest["output_id"]
    if not fs.exists(spark, path):
        return "missing"
    entries = sorted(f"{name}:{size}:{mtime}" for name, size, mtime in fs.list_files(spark, path))
    return hashlib.sha256("\n".join(entries).encode()).hexdigest()[:16]


def up_to_date(spark: SparkSession, output: str, config_hash: str, inputs: dict[str, str]) -> dict | None:
    """The manifest of ``output`` when it was made from this config and these inputs, else None."""
    manifest = fs.read_manifest(spark, output)
    if manifest is None:
        return None
    if manifest.get("config_hash") != config_hash or manifest.get("inputs") != inputs:
        return None
    return manifest


def run_stage(
    spark: SparkSession,
    cfg: Config,
    stage: str,
    output: str,
    sections: tuple[str, ...],
    input_paths: list[str],
    body: Callable[[str], dict[str, Any]],
    force: bool = False,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``body(tmp_dir)`` unless ``output`` is up to date; write its manifest atomically.

    ``body`` writes its tables under ``tmp_dir`` and returns the manifest's
    ``counts``.  The returned manifest has ``skipped`` set when nothing ran.
    """
    fs.recover(spark, output)  # what a run killed while writing it left behind
    config_hash = cfg.section_hash(*sections, extra=extra)
    inputs = {p: fingerprint(spark, p) for p in input_paths}
    if not force:
        manifest = up_to_date(spark, output, config_hash, inputs)
        if manifest is not None:
            log.info("%s: up to date at %s (config %s), skipped", stage, output, config_hash)
            return {**manifest, "skipped": True}
    log.info("%s: running -> %s", stage, output)
    start = time.perf_counter()
    with fs.atomic_output(spark, output) as tmp, faults.stage(stage), classic_needed(spark, stage), tagged(spark, stage):
        counts = body(tmp)
        wall = round(time.perf_counter() - start, 3)
        manifest = {
            "stage": stage,
            "version": __version__,
            "config_hash": config_hash,
            "config": {**{s: cfg.to_dict()[s] for s in sections}, **({"extra": extra} if extra else {})},
            "inputs": inputs,
            "counts": counts,
            "wall_s": wall,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        manifest["output_id"] = hashlib.sha256(
            f"{config_hash}|{sorted(inputs.items())}|{manifest['created']}".encode()
        ).hexdigest()[:16]
        fs.write_json(spark, f"{tmp}/{fs.MANIFEST}", manifest)
    log.info("%s: done in %.1fs", stage, wall)
    return {**manifest, "skipped": False}


def write(df: DataFrame, path: str, partitions: int | None = None) -> None:
    """Write ``df`` as Parquet at ``path`` (which must not exist), in ``partitions`` files if given."""
    if partitions:
        df = df.coalesce(partitions)
    df.write.mode("error").parquet(path)
