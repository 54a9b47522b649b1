"""Logging set-up for jobs and a small progress/timing helper."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(job: str, level: int = logging.INFO) -> logging.Logger:
    """Send the project's logs (``recsys_spark.*``) to stderr; return the job's logger.

    The handler sits on the ``recsys_spark`` logger rather than the root, so it
    works the same whether or not Spark or a notebook configured the root.
    """
    pkg = logging.getLogger("recsys_spark")
    if not any(getattr(h, "_recsys", False) for h in pkg.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
        handler._recsys = True  # type: ignore[attr-defined]
        pkg.addHandler(handler)
    pkg.setLevel(level)
    pkg.propagate = False
    logging.getLogger("py4j").setLevel(logging.WARNING)
    return logging.getLogger(f"recsys_spark.jobs.{job}")


@contextlib.contextmanager
def timed(log: logging.Logger, what: str, timings: dict[str, float] | None = None) -> Iterator[None]:
    """Log the start and the wall time of a step; record it in ``timings``."""
    log.info("%s ...", what)
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        if timings is not None:
            timings[what] = round(elapsed, 3)
        log.info("%s done in %.1fs", what, elapsed)
