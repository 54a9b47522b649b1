"""Ingest + split wall time and peak driver memory, per dataset.

    .venv/bin/python benchmarks/ingest_split.py --out benchmarks/results/performance/ingest-split.json
    .venv/bin/python benchmarks/ingest_split.py --datasets ml-latest-small,gen-1m

Each dataset runs in its own child process (a fresh JVM), so peak memory is
per run.  The parent samples the resident memory of the child's process tree
(the Python driver and its JVM; in local mode the JVM is driver and executors
in one) every 0.2 s.  Generating the synthetic data is done first and timed
separately; the figures are ingest (raw CSV -> validated Parquet) and split
(per-user stratified 75/25, seed 42) as the pipeline runs them, outputs
written to a scratch directory.

Datasets: ml-latest-small (needs $RECSYS_DATA_DIR), gen-1m, gen-5m, gen-20m
(synthetic, MovieLens-shaped; see recsys_spark.generate).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import run_child  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from recsys_spark.generate import POPULARITY_SETTINGS  # noqa: E402

# the scale figures in docs/performance.md were made with the generator before selection by
# taste: these keep its settings (recsys_spark.generate.POPULARITY_SETTINGS) so they recheck
_BEFORE_TASTE = [f"generate.{k}={v!r}".replace("'", '"') for k, v in POPULARITY_SETTINGS.items()]
GENERATED = {
    "gen-1m": ["generate.n_users=6000", "generate.n_items=4000", "generate.n_ratings=1000000", *_BEFORE_TASTE],
    "gen-5m": ["generate.n_users=30000", "generate.n_items=10000", "generate.n_ratings=5000000", *_BEFORE_TASTE],
    "gen-20m": ["generate.n_users=120000", "generate.n_items=25000", "generate.n_ratings=20000000", *_BEFORE_TASTE],
}


def overrides_for(name: str, out: str) -> list[str]:
    common = [f'paths.output="{out}"', "spark.driver_memory=\"6g\"", "spark.log_level=\"ERROR\""]
    if name == "ml-latest-small":
        return [*common, "dataset.kind=ml-latest", "dataset.name=ml-latest-small"]
    return [*common, "dataset.kind=generated", f"dataset.name={name}", *GENERATED[name]]


def child(name: str, out: str, shuffle_partitions: int) -> None:
    """Run in the child: generate (if synthetic), then ingest and split, print JSON."""
    sys.path.insert(0, str(ROOT))
    from recsys_spark.config import load_config
    from recsys_spark.logs import setup_logging
    from recsys_spark.spark import get_spark
    from recsys_spark.stages import run_generate, run_ingest, run_split

    setup_logging("benchmark")
    cfg = load_config(
        ROOT / "conf" / "local.toml", [*overrides_for(name, out), f"spark.shuffle_partitions={shuffle_partitions}"]
    )
    spark = get_spark(cfg.spark, cfg.checkpoint_dir, f"benchmark {name}")
    result: dict = {"dataset": name}
    if cfg.dataset.kind == "generated":
        t = time.perf_counter()
        gen = run_generate(spark, cfg, force=True)
        result["generate_s"] = round(time.perf_counter() - t, 1)
        result["generated"] = gen["counts"]
    print("MARK ingest", flush=True)  # noqa: T201 - protocol line for the parent
    t = time.perf_counter()
    ing = run_ingest(spark, cfg, force=True)
    result["ingest_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    spl = run_split(spark, cfg, force=True)
    result["split_s"] = round(time.perf_counter() - t, 1)
    result["ingest_split_s"] = round(result["ingest_s"] + result["split_s"], 1)
    result["ratings"] = ing["counts"]["ratings"]
    result["users"] = ing["counts"]["users"]
    result["items"] = ing["counts"]["items"]
    result["quarantined"] = ing["counts"]["tables"]["ratings"]["quarantined"]
    result["split"] = {k: spl["counts"][k] for k in ("train", "valid", "test")}
    spark.stop()
    print("RESULT " + json.dumps(result), flush=True)  # noqa: T201


def run_one(name: str, shuffle_partitions: int) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as out:
        cmd = [sys.executable, __file__, "--child", name, "--scratch", out, "--shuffle-partitions", str(shuffle_partitions)]
        result, peaks = run_child(cmd, ROOT, name)
        py, jvm = peaks.get("ingest", (0, 0))  # only ingest + split count
        result["peak_driver_python_mib"] = round(py / 2**20)
        result["peak_driver_jvm_rss_mib"] = round(jvm / 2**20)
        return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="ml-latest-small,gen-1m,gen-5m")
    ap.add_argument("--shuffle-partitions", type=int, default=8)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--scratch", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.scratch, args.shuffle_partitions)
        return
    results = []
    for name in args.datasets.split(","):
        r = run_one(name, args.shuffle_partitions)
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
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")
    print("| dataset | ratings | ingest s | split s | ingest+split s | peak driver JVM RSS MiB | peak driver Python MiB |")  # noqa: T201
    print("|---|---:|---:|---:|---:|---:|---:|")  # noqa: T201
    for r in results:
        print(  # noqa: T201
            f"| {r['dataset']} | {r['ratings']:,} | {r['ingest_s']} | {r['split_s']} | {r['ingest_split_s']} | "
            f"{r['peak_driver_jvm_rss_mib']} | {r['peak_driver_python_mib']} |"
        )


if __name__ == "__main__":
    main()
