"""What a model costs: wall time by phase, peak memory of the processes doing the work, size on disk.

:class:`CostMeter` times named phases (``fit``, ``predict``, ``recommend``)
and, in a background thread, samples every ``interval_s`` seconds:

* ``driver_python``: resident memory of this Python process (the driver);
* ``jvm_rss``: resident memory of the JVMs this process started (in local
  mode the JVM is the driver and the executors in one);
* ``jvm_heap``: heap in use in the driver's JVM (``MemoryMXBean``; a full GC
  is asked for when the meter starts, so each model starts from its live
  heap, and garbage not yet collected counts: it is an upper bound);
* ``python_workers``: resident memory of the Python workers the JVM forks
  (the executors' Python: UDFs, ``mapInPandas``, torch scoring), summed over
  the workers alive at one sample.

On a cluster only the driver's figures are measured here; executor memory
there comes from Spark's own executor metrics (UI or event log).  The sampler
stops when the meter exits, also on an exception; a sample that fails (a
worker exiting between listing and reading) is skipped.

:func:`dir_bytes` is the size on disk of a saved model (any Hadoop path).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MB = 2**20
MEMORY_KEYS = ("driver_python", "jvm_rss", "jvm_heap", "python_workers")


def process_memory(pid: int | None = None) -> dict[str, int]:
    """Resident bytes of ``pid`` (this process by default), of the JVMs it started and of their Python children."""
    import psutil

    out = {"driver_python": 0, "jvm_rss": 0, "python_workers": 0}
    try:
        me = psutil.Process(pid or os.getpid())
        out["driver_python"] = me.memory_info().rss
        for child in me.children(recursive=False):
            try:
                if Path(child.exe()).name != "java":
                    continue
                out["jvm_rss"] += child.memory_info().rss
                for worker in child.children(recursive=True):  # pyspark.daemon and the workers it forks
                    with contextlib.suppress(psutil.Error):
                        out["python_workers"] += worker.memory_info().rss
            except psutil.Error:
                continue
    except psutil.Error:
        pass
    return out


class CostMeter:
    """Times phases and keeps the peak of each memory figure while it is open (a context manager)."""

    def __init__(self, spark: Any = None, interval_s: float = 0.2, gc: bool = True) -> None:
        self.spark = spark
        self.interval_s = interval_s
        self.gc = gc
        self.seconds: dict[str, float] = {}
        self.peak: dict[str, int] = dict.fromkeys(MEMORY_KEYS, 0)
        self.start: dict[str, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._heap = None

    # -- sampling --------------------------------------------------------
    def _heap_used(self) -> int:
        if self._heap is None:
            return 0
        try:
            return int(self._heap.getHeapMemoryUsage().getUsed())
        except Exception:  # noqa: BLE001 -- the gateway closing under the sampler: skip this sample
            return 0

    def sample(self) -> dict[str, int]:
        now = {**process_memory(), "jvm_heap": self._heap_used()}
        for key, v in now.items():
            self.peak[key] = max(self.peak[key], v)
        self.samples += 1
        return now

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> CostMeter:
        if self.spark is not None:
            try:
                jvm = self.spark.sparkContext._jvm
                if self.gc:
                    jvm.java.lang.System.gc()
                self._heap = jvm.java.lang.management.ManagementFactory.getMemoryMXBean()
            except Exception:  # noqa: BLE001 -- Spark Connect has no JVM here: the process figures only
                self._heap = None
        self.start = self.sample()
        self._thread = threading.Thread(target=self._run, name="cost-meter", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * self.interval_s + 1)
        self.sample()

    # -- phases ----------------------------------------------------------
    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t

    def result(self) -> dict[str, Any]:
        """Seconds per phase (``<phase>_s``) and peak MB per memory figure (``peak_<figure>_mb``)."""
        out: dict[str, Any] = {f"{k}_s": round(v, 3) for k, v in self.seconds.items()}
        for key in MEMORY_KEYS:
            if key == "jvm_heap" and self._heap is None:
                continue
            out[f"peak_{key}_mb"] = round(self.peak[key] / MB, 1)
        out["memory_samples"] = self.samples
        return out


def dir_bytes(spark: Any, path: str) -> int:
    """Bytes of every file under ``path`` (a saved model), Spark's marker and checksum files excluded."""
    from recsys_spark.io import fs

    return sum(size for name, size, _ in fs.list_files(spark, path) if not name.startswith((".", "_")))


def throughput(cost: dict[str, Any], rows: int, users: int) -> dict[str, Any]:
    """Rows per second of ``predict_s`` and users per second (and seconds per 1,000 users) of ``recommend_s``."""
    out: dict[str, Any] = {}
    if cost.get("predict_s"):
        out["predict_rows_per_s"] = round(rows / cost["predict_s"], 1)
    if cost.get("recommend_s"):
        out["recommend_users_per_s"] = round(users / cost["recommend_s"], 1)
        out["recommend_s_per_1k_users"] = round(1000 * cost["recommend_s"] / max(users, 1), 3)
    return out
