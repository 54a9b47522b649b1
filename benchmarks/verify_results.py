"""Rerun the benchmark commands behind docs/results.md and compare every figure with its stored JSON.

    RECSYS_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/verify_results.py --list
    RECSYS_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/verify_results.py rating/ml-100k/baselines
    RECSYS_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/verify_results.py rating/ml-100k/deep:autorec --folds 1
    make verify-results VERIFY="topn/ml-100k/knn coldstart/ml-100k/single-slice"

A name is a result file under ``benchmarks/results/`` without ``.json``,
optionally with ``:model,model`` to rerun some of its models.  The protocol,
dataset, folds, k and slices come from the file itself (every
``recsys-spark benchmark`` result records them), so the rerun is the command
that wrote it.  Every numeric figure is compared (metrics, row and fallback
counts, paired intervals) except timings; ``--folds`` reruns some folds of a
rating result and compares those folds' figures.  Only files made with the
current defaults are listed (``CURRENT``): older files record settings the
code has since moved on from (their tables say which).  Exit code 1 when a
figure differs by more than ``--tol``.  Not part of CI: a full rerun takes
about an hour on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# result files whose figures today's defaults reproduce (the rest record superseded settings)
CURRENT = [
    "rating/ml-100k/baselines", "rating/ml-100k/knn", "rating/ml-100k/als-backfitted", "rating/ml-100k/svd-float32",
    "rating/ml-100k/svd_gd-bold-driver", "rating/ml-100k/svdpp_svdpp_time-torch-scatter", "rating/ml-100k/deep",
    "topn/ml-100k/baselines", "topn/ml-100k/knn", "topn/ml-100k/content-trend", "topn/ml-100k/deep",
    "topn/ml-latest-small/baselines", "topn/ml-latest-small/knn", "topn/ml-latest-small/content-trend",
    "topn/ml-latest-small/als_implicit-tuned", "topn/ml-latest-small/als-backfitted",
    "topn/ml-100k/itemitem", "topn/ml-latest-small/itemitem",
    "coldstart/ml-100k/single-slice", "coldstart/ml-latest-small/single-slice", "topn/ml-100k/deepfm", "coldstart/ml-100k/deepfm",
]  # fmt: skip
TIMING = ("_s", "_seconds")


def figures(node: Any, prefix: str = "") -> dict[str, float]:
    """Every numeric leaf of a result, keyed by its path; timings left out, fold lists keyed by fold name."""
    out: dict[str, float] = {}
    if isinstance(node, dict):
        for key, value in node.items():
            if key.endswith(TIMING) or key == "slices" and isinstance(value, list):
                continue
            out.update(figures(value, f"{prefix}{key}/"))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            tag = value.get("fold", i) if isinstance(value, dict) else i
            out.update(figures(value, f"{prefix}{tag}/"))
    elif isinstance(node, bool):
        pass
    elif isinstance(node, int | float):
        out[prefix.rstrip("/")] = float(node)
    return out


def compare(stored: dict[str, Any], rerun: dict[str, Any], tol: float, folds_only: bool) -> tuple[list[str], int]:
    """``(differences, figures compared)`` between the stored and the rerun figures (paths both have)."""
    want, got = figures(stored), figures(rerun)
    problems, compared = [], 0
    for path, value in sorted(got.items()):
        if folds_only and "/folds/" not in path:
            continue  # a subset of folds: only the per-fold figures are comparable
        if path not in want:
            continue  # a figure the stored run did not record
        compared += 1
        if abs(value - want[path]) > tol * max(1.0, abs(want[path])):
            problems.append(f"{path}: stored {want[path]:.6g}, rerun {value:.6g}")
    return problems, compared


def verify(spark: Any, name: str, folds: str | None, tol: float, log: logging.Logger) -> list[str]:
    from recsys_spark.benchmark import run_benchmark

    file, _, only = name.partition(":")
    stored = json.loads((RESULTS / f"{file}.json").read_text())
    proto = stored["protocol"]
    sections = stored["experiments"] if proto["name"] == "coldstart" else {"": stored}
    models = only.split(",") if only else sorted({m for s in sections.values() for m in s["models"]})
    fold_arg = folds or ",".join(f.lstrip("u") for f in proto.get("folds", ["u1", "u2", "u3", "u4", "u5"]))
    log.info("%s: rerunning %s on %s (%s)", file, proto["name"], proto["dataset"], ", ".join(models))
    rerun = run_benchmark(
        spark, proto["name"], proto["dataset"], models, folds=fold_arg, k=proto.get("k", 10), slices=proto.get("slices", 1),
    )  # fmt: skip
    rerun_sections = rerun["experiments"] if proto["name"] == "coldstart" else {"": rerun}
    problems, compared = [], 0
    for key, section in rerun_sections.items():
        keep = {m: v for m, v in sections[key]["models"].items() if m in models}
        got = {"models": section["models"], **({"paired": section["paired"]} if "paired" in section else {})}
        want = {"models": keep, **({"paired": sections[key]["paired"]} if "paired" in sections[key] else {})}
        diff, n = compare(want, got, tol, folds is not None)
        problems += [f"{key + ': ' if key else ''}{p}" for p in diff]
        compared += n
    if compared == 0:
        problems.append("no figure of the rerun is in the stored file: nothing was compared")
    log.info("%s: %d figures compared", file, compared)
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", help="result files to verify (default: every CURRENT one)")
    ap.add_argument("--folds", default=None, help="rating results: rerun only these folds, e.g. 1 or 1,3")
    ap.add_argument("--tol", type=float, default=1e-4, help="largest relative difference accepted (default 1e-4)")
    ap.add_argument("--list", action="store_true", help="list the verifiable files and exit")
    args = ap.parse_args(argv)
    if args.list:
        sys.stdout.write("\n".join(CURRENT) + "\n")
        return 0
    from recsys_spark.config import load_config
    from recsys_spark.logs import setup_logging
    from recsys_spark.spark import get_spark

    log = setup_logging("verify-results")
    cfg = load_config(None, [])
    spark = get_spark(cfg.spark, cfg.checkpoint_dir, "verify results")
    failed = 0
    try:
        for name in args.names or CURRENT:
            problems = verify(spark, name, args.folds, args.tol, log)
            if problems:
                failed += 1
                log.error("%s: %d figure(s) differ:\n  %s", name, len(problems), "\n  ".join(problems))
            else:
                log.info("%s: every figure matches", name)
    finally:
        spark.stop()
    log.info("%d of %d result files verified", len(args.names or CURRENT) - failed, len(args.names or CURRENT))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
