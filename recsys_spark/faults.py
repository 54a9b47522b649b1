"""Test-only fault injection: every table a stage writes (and every pandas function) loses one task once, unnoticed.

Switched on by the environment variable ``RECSYS_FAULTS`` naming a folder on
the driver's machine (never by a config key: nothing a run writes may depend
on it, and its manifests hash the same config as a clean run's).  While a
pipeline stage runs (:func:`stage`), every DataFrame written through
``df.write`` first passes a filter by a Python UDF that, in the first task to
reach it, creates the marker file ``<folder>/<stage>-<n>`` (``n`` counts the
stage's writes) and raises; the retried task finds the marker and goes on.
The markers are the count of injected failures.

The failure happens in the write job itself, after the task has computed its
part of the table and begun writing it, so the retry exercises the file
committer and the recomputation of that partition from the lineage.

Work before the write is failed too where it runs our Python in the
executors through ``DataFrame.mapInPandas`` or ``groupBy(...).applyInPandas``
(the kNN block kernel, the Gram tiles, the content top-k, the item-item slabs
and scoring, the factor models' top-N): every such function a stage builds
fails in the first task that calls it (marker ``<stage>-map-<n>``), so a fit's
or a recommend's Spark job retries a task.  The RDD closures of our SGD
engine, cogrouped functions and MLlib's JVM code are not failed.

Spark retries a task only where ``spark.task.maxFailures`` > 1 applies:
``local[N,F]`` with ``F`` > 1, ``local-cluster`` or a standalone master (whose
default is 4).  Under plain ``local[N]`` the first injected failure ends the
job, which is what a test of the switch itself expects.  The markers are local
files: on a cluster of several hosts a task fails once per host.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

ENV = "RECSYS_FAULTS"

_state: dict[str, object] = {"stage": None, "n": 0, "maps": 0, "installed": False}


def folder() -> Path | None:
    value = os.environ.get(ENV, "").strip()
    return Path(value) if value else None


def _fail_once(marker: str):
    from pyspark.sql import functions as F

    def check(_unused):  # no type hints: PySpark would take them for a pandas UDF
        import os as _os

        try:
            fd = _os.open(marker, _os.O_CREAT | _os.O_EXCL | _os.O_WRONLY)
        except FileExistsError:
            return True
        _os.close(fd)
        raise RuntimeError(f"injected task failure ({marker}); {ENV} is set")

    return F.udf(check, "boolean").asNondeterministic()(F.lit(0))


def _fail_first_call(func, marker: str):
    """``func`` (a ``mapInPandas`` or ``applyInPandas`` body) raising in the first task that calls it.

    A closure, not default arguments: the worker tells a grouped function's
    ``(key, pdf)`` form from ``(pdf)`` by its argument count.
    """
    import inspect

    def check():
        import os as _os

        try:
            fd = _os.open(marker, _os.O_CREAT | _os.O_EXCL | _os.O_WRONLY)
        except FileExistsError:
            return
        _os.close(fd)
        raise RuntimeError(f"injected task failure ({marker}); {ENV} is set")

    if len(inspect.getfullargspec(func).args) == 2:

        def body2(key, pdf):
            check()
            return func(key, pdf)

        return body2

    def body(arg):
        check()
        return func(arg)

    return body


def _marker() -> str | None:
    """The next ``<stage>-map-<n>`` marker while a stage runs with the switch on, else None."""
    root = folder()
    if root is None or _state["stage"] is None:
        return None
    _state["maps"] = int(_state["maps"]) + 1  # type: ignore[call-overload]
    return str(root / f"{_state['stage']}-map-{_state['maps']:03d}")


def _install() -> None:
    """Wrap ``DataFrame.write``, ``DataFrame.mapInPandas`` and ``GroupedData.applyInPandas`` of classic PySpark (once per process)."""
    if _state["installed"]:
        return
    from pyspark.sql.classic.dataframe import DataFrame
    from pyspark.sql.group import GroupedData

    original = DataFrame.write
    original_map, original_apply = DataFrame.mapInPandas, GroupedData.applyInPandas

    def map_in_pandas(self, func, schema, *args, **kwargs):  # type: ignore[no-untyped-def]
        marker = _marker()
        return original_map(self, _fail_first_call(func, marker) if marker else func, schema, *args, **kwargs)

    def apply_in_pandas(self, func, schema, *args, **kwargs):  # type: ignore[no-untyped-def]
        marker = _marker()
        return original_apply(self, _fail_first_call(func, marker) if marker else func, schema, *args, **kwargs)

    DataFrame.mapInPandas = map_in_pandas  # type: ignore[method-assign]
    GroupedData.applyInPandas = apply_in_pandas  # type: ignore[method-assign]

    def write(self):  # type: ignore[no-untyped-def]
        root = folder()
        if root is None or _state["stage"] is None:
            return original.fget(self)
        _state["n"] = int(_state["n"]) + 1  # type: ignore[call-overload]
        marker = root / f"{_state['stage']}-{_state['n']:03d}"
        return original.fget(self.where(_fail_once(str(marker))))

    DataFrame.write = property(write)  # type: ignore[assignment,method-assign]
    _state["installed"] = True


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Inject failures into the writes of pipeline stage ``name`` when :data:`ENV` is set; else do nothing."""
    root = folder()
    if root is None:
        yield
        return
    root.mkdir(parents=True, exist_ok=True)
    _install()
    log.warning("%s: %s=%s, every table written and every pandas function fails one task once (test-only)", name, ENV, root)
    before = _state["stage"], _state["n"], _state["maps"]
    _state["stage"], _state["n"], _state["maps"] = name.replace(":", "_").replace("/", "_"), 0, 0
    try:
        yield
    finally:
        _state["stage"], _state["n"], _state["maps"] = before


def injected(root: Path) -> list[str]:
    """The markers of the failures injected so far (sorted names)."""
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []
