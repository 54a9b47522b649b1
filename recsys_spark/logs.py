"""Logging set-up for jobs and a small progress/timing helper."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(job: str, level: int = logging.INFO) -> logging.Logger:
    """Configure root logging once for a job process and return the job's logger."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT, datefmt="%H:%M:%S"))
        root.addHandler(handler)
    root.setLevel(level)
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
