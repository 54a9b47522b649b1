"""Item-item similarity job: Spark (join reference and block kernel) against single-process scipy.

    .venv/bin/python benchmarks/neighbors.py --datasets ml-latest-small,gen-1m,gen-5m \
        --out benchmarks/results/performance/neighbors.json
    .venv/bin/python benchmarks/neighbors.py --datasets gen-20m --no-scipy --kernels blocks

What is timed, per dataset, on all ingested ratings (item-item, Pearson over
co-raters, shrinkage 100, at most ``--cap`` ratings per user chosen by a
seeded hash, top ``--neighbors`` per item, written to Parquet):

* ``join``: ``similarities(kernel="join")`` - the partitioned self-join;
* ``blocks``: ``similarities(kernel="blocks")`` - entity-block join with
  scipy sparse products inside the tasks;
* ``scipy``: one Python process, the same capped ratings already in memory
  as numpy arrays, one ``X'X``-style computation (``block_pair_stats`` on
  everything), the same finalisation and top-k.  Its input is the capped
  table the Spark jobs select (written once beforehand, not timed).

Also recorded: shuffle bytes written (Spark's REST API, per job), the pairs
generated (``sum_u C(min(n_u, cap), 2)``) and the distinct pairs, the peak
resident memory of the driver's Python process during the Spark jobs, and how
well the block kernel's table agrees with scipy's.  Each dataset runs in its
own child process (a fresh JVM).  Generated data and its ingest are cached
under ``--scratch`` so reruns only time the similarity jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from harness import run_child  # noqa: E402
from ingest_split import overrides_for  # noqa: E402

SIMILARITY = "pearson"
SHRINKAGE = 100.0


def shuffle_written(sc) -> int:  # type: ignore[no-untyped-def]
    """Total shuffle bytes written by every completed stage so far (Spark's REST API)."""
    time.sleep(1.0)  # let the listener bus catch up
    url = f"{sc.uiWebUrl}/api/v1/applications/{sc.applicationId}/stages?status=complete"
    with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 - the local driver's UI
        stages = json.load(resp)
    return sum(s.get("shuffleWriteBytes", 0) for s in stages)


def scipy_table(keys, items, x, cap_neighbors: int):  # type: ignore[no-untyped-def]
    from recsys_spark.neighbors import block_pair_stats, both_directions, finalize_stats

    stats = block_pair_stats(keys, items, x, keys, items, x, same=True)
    one_way = finalize_stats(stats, SIMILARITY, SHRINKAGE, 1)
    return both_directions(one_way, None, cap_neighbors), len(one_way["a"])


def child(name: str, scratch: str, args: argparse.Namespace) -> None:
    import numpy as np
    import pyarrow.parquet as pq
    from pyspark.sql import functions as F

    from recsys_spark.config import load_config
    from recsys_spark.logs import setup_logging
    from recsys_spark.neighbors import cap_ratings, similarities
    from recsys_spark.spark import get_spark
    from recsys_spark.stages import read_ingested, run_generate, run_ingest

    log = setup_logging("bench-neighbors")
    out = f"{scratch}/{name}"
    cfg = load_config(ROOT / "conf" / "local.toml", [*overrides_for(name, out), f"spark.shuffle_partitions={args.shuffle_partitions}"])
    cfg.spark.conf["spark.ui.enabled"] = "true"
    spark = get_spark(cfg.spark, cfg.checkpoint_dir, f"bench neighbors {name}")
    sc = spark.sparkContext
    if cfg.dataset.kind == "generated":
        run_generate(spark, cfg)
    run_ingest(spark, cfg)
    ratings = read_ingested(spark, cfg).select("user_idx", "item_idx", "rating").cache()
    n = ratings.count()
    per_user = ratings.groupBy("user_idx").count()
    pairs_generated = per_user.agg(F.sum(F.least("count", F.lit(args.cap)) * (F.least("count", F.lit(args.cap)) - 1) / 2)).first()[0]
    capped_path = f"{out}/capped-{args.cap}"
    cap_ratings(ratings, args.cap).write.mode("overwrite").parquet(capped_path)
    n_capped = spark.read.parquet(capped_path).count()
    result = {"dataset": name, "ratings": n, "ratings_after_cap": n_capped, "cap": args.cap, "pairs_generated": int(pairs_generated),
              "similarity": SIMILARITY, "shrinkage": SHRINKAGE, "neighbors": args.neighbors}  # fmt: skip
    print("MARK spark", flush=True)  # noqa: T201 - protocol line for the parent
    for kernel in args.kernels.split(","):
        before = shuffle_written(sc)
        t = time.perf_counter()
        table = similarities(ratings, similarity=SIMILARITY, shrinkage=SHRINKAGE, cap=args.cap, max_neighbors=args.neighbors, kernel=kernel)
        table.write.mode("overwrite").parquet(f"{out}/table-{kernel}")
        wall = time.perf_counter() - t
        result[f"{kernel}_s"] = round(wall, 1)
        result[f"{kernel}_shuffle_mib"] = round((shuffle_written(sc) - before) / 2**20, 1)
        result[f"{kernel}_rows"] = spark.read.parquet(f"{out}/table-{kernel}").count()
        log.info("%s %s: %.1fs, shuffle %.1f MiB", name, kernel, wall, result[f"{kernel}_shuffle_mib"])
    spark.stop()
    print("MARK scipy", flush=True)  # noqa: T201
    if not args.no_scipy:
        cap = pq.read_table(capped_path).to_pandas()
        keys, items, x = (cap[c].to_numpy() for c in ("user_idx", "item_idx", "rating"))
        t = time.perf_counter()
        ref, distinct = scipy_table(keys, items, x.astype(np.float64), args.neighbors)
        result["scipy_s"] = round(time.perf_counter() - t, 1)
        result["distinct_pairs"] = distinct
        result["scipy_rows"] = len(ref["a"])
        for kernel in args.kernels.split(","):
            got = pq.read_table(f"{out}/table-{kernel}").to_pandas()
            mine = {(a, b): s for a, b, s in zip(ref["a"], ref["b"], ref["sim"], strict=True)}
            common = [(abs(mine[(a, b)] - s)) for a, b, s in zip(got["a"], got["b"], got["sim"], strict=True) if (a, b) in mine]
            result[f"{kernel}_agreement"] = round(len(common) / max(1, len(mine)), 6)
            result[f"{kernel}_max_abs_diff"] = float(max(common, default=0.0))
            result[f"{kernel}_vs_scipy"] = round(result[f"{kernel}_s"] / max(result["scipy_s"], 1e-9), 2)
    print("RESULT " + json.dumps(result), flush=True)  # noqa: T201


def run_one(name: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--scratch", args.scratch, "--cap", str(args.cap),
           "--neighbors", str(args.neighbors), "--kernels", args.kernels, "--shuffle-partitions", str(args.shuffle_partitions)]  # fmt: skip
    if args.no_scipy:
        cmd.append("--no-scipy")
    result, peaks = run_child(cmd, ROOT, name)
    py, jvm = peaks.get("spark", (0, 0))
    result["peak_driver_python_mib"] = round(py / 2**20)
    result["peak_driver_jvm_rss_mib"] = round(jvm / 2**20)
    if not args.no_scipy:
        result["peak_scipy_process_mib"] = round(peaks.get("scipy", (0, 0))[0] / 2**20)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="ml-latest-small,gen-1m,gen-5m")
    ap.add_argument("--cap", type=int, default=200, help="ratings per user used for pair generation")
    ap.add_argument("--neighbors", type=int, default=50, help="neighbours kept per item")
    ap.add_argument("--kernels", default="join,blocks")
    ap.add_argument("--no-scipy", action="store_true", help="skip the single-process reference (e.g. at 20M)")
    ap.add_argument("--shuffle-partitions", type=int, default=8)
    ap.add_argument("--scratch", default=str(ROOT / "output" / "bench-neighborhood"))
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.scratch, args)
        return
    results = []
    for name in args.datasets.split(","):
        r = run_one(name, args)
        results.append(r)
        print(json.dumps(r), flush=True)  # noqa: T201 - a script's report
    payload = {
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30),
            "python": platform.python_version(),
        },
        "spark": {"master": "local[2]", "shuffle_partitions": args.shuffle_partitions, "driver_memory": "6g"},
        "results": results,
    }
    if args.out:
        path = Path(args.out)
        old = json.loads(path.read_text())["results"] if path.exists() else []
        keep = [r for r in old if r["dataset"] not in {x["dataset"] for x in results}]
        payload["results"] = keep + results
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
