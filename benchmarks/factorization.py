"""Factorization performance: MLlib ALS with the native BLAS vs the Java fallback; our SGD SVD vs a single-node reference.

    .venv/bin/python benchmarks/factorization.py als-blas --dataset gen-5m --out benchmarks/results/performance/factorization-als-blas.json
    .venv/bin/python benchmarks/factorization.py sgd --datasets gen-1m,gen-5m --epochs 10 \
        --variants float64/numpy,float64/auto,float32/auto --reference-python /tmp/surprise-venv/bin/python \
        --out benchmarks/results/performance/factorization-sgd-torch-scatter.json

* ``als-blas``: ``pyspark.ml.recommendation.ALS`` (rank ``--als-rank``, default 10, 10 iterations,
  reg 0.1) fitted on all ingested ratings, in three fresh JVMs: one that
  loads the native BLAS (``libblas.so.3``), the same with
  ``OPENBLAS_NUM_THREADS=1`` (Spark's advice: its tasks are already
  parallel), and one told to load a library that does not exist
  (``-Ddev.ludovic.netlib.blas.nativeLib=...``), so netlib falls back to its
  Java implementation; the implementation actually used is read back from
  the JVM and recorded.
* ``sgd``: our ``SVD`` (mini-batch SGD, rank ``--rank``, batch 1,024) for
  ``--epochs`` epochs in ``local[2]``, once per ``--variants`` entry
  ``DTYPE/SCATTER`` (the kernel's float precision; the scatter-add backend,
  set through ``RECSYS_SCATTER_BACKEND``, and the one the workers really used
  is recorded); per-epoch seconds are the median of epochs 2..E (epoch 1
  also builds the shards, reported separately).  The reference is
  the widely used single-node library's ``SVD`` (same rank and epochs) run by
  ``--reference-python`` -- an interpreter where that library is installed,
  kept out of the project's dependencies -- on the same ratings, with its
  trainset build timed separately.

Generated data comes from the neighbourhood benchmark's cache
(``output/bench-neighborhood/<name>``), created on first use.  Each run is a
child process (a fresh JVM).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from harness import run_child  # noqa: E402
from ingest_split import overrides_for  # noqa: E402

SCRATCH = ROOT / "output" / "bench-neighborhood"

REFERENCE = r"""
import glob, json, sys, time
import pandas as pd
from surprise import SVD, Dataset, Reader
files = sorted(glob.glob(sys.argv[1] + "/*.parquet"))
df = pd.concat(pd.read_parquet(f, columns=["user_idx", "item_idx", "rating"]) for f in files)
t = time.perf_counter()
data = Dataset.load_from_df(df[["user_idx", "item_idx", "rating"]], Reader(rating_scale=(df.rating.min(), df.rating.max())))
ts = data.build_full_trainset()
build = time.perf_counter() - t
algo = SVD(n_factors=int(sys.argv[2]), n_epochs=int(sys.argv[3]), random_state=0)
t = time.perf_counter()
algo.fit(ts)
fit = time.perf_counter() - t
print(json.dumps({"ratings": len(df), "trainset_s": round(build, 2), "fit_s": round(fit, 2), "epoch_s": round(fit / int(sys.argv[3]), 3)}))
"""


def _session(name: str):  # type: ignore[no-untyped-def]
    from recsys_spark.config import load_config
    from recsys_spark.logs import setup_logging
    from recsys_spark.spark import get_spark
    from recsys_spark.stages import run_generate, run_ingest

    setup_logging("benchmark")
    sets = [*overrides_for(name, str(SCRATCH / name)), "spark.shuffle_partitions=8"]
    cfg = load_config(ROOT / "conf" / "local.toml", sets)
    spark = get_spark(cfg.spark, cfg.checkpoint_dir, f"factorization benchmark {name}")
    if cfg.dataset.kind == "generated":
        run_generate(spark, cfg)
    run_ingest(spark, cfg)
    return spark, cfg


def child_als(name: str, java_blas: bool, rank: int = 10) -> None:
    from pyspark.ml.recommendation import ALS

    from recsys_spark.stages import read_ingested

    if java_blas:  # read by the JVM pyspark launches (driver and executors in local mode)
        os.environ["JAVA_TOOL_OPTIONS"] = "-Ddev.ludovic.netlib.blas.nativeLib=libdoesnotexist.so"
    spark, cfg = _session(name)
    ratings = read_ingested(spark, cfg).selectExpr("user_idx", "item_idx", "cast(rating as float) rating").cache()
    n = ratings.count()
    impl = spark.sparkContext._jvm.dev.ludovic.netlib.blas.BLAS.getInstance().getClass().getName()
    print("MARK fit", flush=True)
    t = time.perf_counter()
    model = ALS(rank=rank, maxIter=10, regParam=0.1, seed=42, userCol="user_idx", itemCol="item_idx", ratingCol="rating").fit(ratings)
    model.userFactors.count()
    model.itemFactors.count()
    fit = time.perf_counter() - t
    print("RESULT " + json.dumps({"dataset": name, "ratings": n, "rank": rank, "blas": impl, "fit_s": round(fit, 2)}), flush=True)
    spark.stop()


def child_sgd(name: str, rank: int, epochs: int, dtype: str) -> None:
    from recsys_spark.factorization.svd import SVD
    from recsys_spark.stages import read_ingested

    spark, cfg = _session(name)
    ratings = read_ingested(spark, cfg).select("user_idx", "item_idx", "rating", "timestamp").cache()
    n = ratings.count()
    print("MARK fit", flush=True)
    t = time.perf_counter()
    model = SVD(rank=rank, n_epochs=epochs, batch_size=1024, dtype=dtype, name="svd").fit(ratings)
    model.user_factors.count()
    fit = time.perf_counter() - t
    ep = model.info["epoch_seconds"]
    print("RESULT " + json.dumps({
        "dataset": name, "ratings": n, "rank": rank, "epochs": epochs, "dtype": dtype, "scatter": _scatter_backend(spark),
        "fit_s": round(fit, 2),
        "first_epoch_s": ep[0], "epoch_s": round(statistics.median(ep[1:]), 3) if len(ep) > 1 else ep[0], "epoch_seconds": ep,
    }), flush=True)  # fmt: skip
    spark.stop()


def _scatter_backend(spark) -> str:  # type: ignore[no-untyped-def]
    """The scatter-add implementation the Python workers actually use."""

    def probe(_):
        from recsys_spark.factorization import kernels as K

        yield K.scatter_backend()

    return spark.sparkContext.parallelize([0], 1).mapPartitions(probe).first()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["als-blas", "sgd"])
    ap.add_argument("--dataset", default="gen-5m")
    ap.add_argument("--datasets", default="gen-1m,gen-5m")
    ap.add_argument("--rank", type=int, default=100)
    ap.add_argument("--als-rank", type=int, default=10, help="als-blas: the ALS rank")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument(
        "--variants",
        default="float64/auto",
        help="sgd: comma-separated DTYPE/SCATTER runs of ours (SCATTER: auto|torch|numpy, RECSYS_SCATTER_BACKEND)",
    )
    ap.add_argument("--dtype", default="float64", help=argparse.SUPPRESS)
    ap.add_argument("--reference-python", default=None, help="interpreter with the reference library (scikit-surprise)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--java-blas", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        if args.what == "als-blas":
            child_als(args.child, args.java_blas, args.als_rank)
        else:
            child_sgd(args.child, args.rank, args.epochs, args.dtype)
        return
    result: dict = {"what": args.what, "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, "runs": []}
    if args.what == "als-blas":
        variants = {  # label -> (extra args, environment)
            "native": ([], {}),
            "native, OPENBLAS_NUM_THREADS=1": ([], {"OPENBLAS_NUM_THREADS": "1"}),
            "java fallback": (["--java-blas"], {}),
        }
        for label, (extra, env) in variants.items():
            cmd = [sys.executable, __file__, "als-blas", "--child", args.dataset, "--als-rank", str(args.als_rank), *extra]
            res, _ = run_child(cmd, ROOT, f"als {label}", env=env)
            res["variant"] = label
            result["runs"].append(res)
            print(json.dumps(res), flush=True)
        base = result["runs"][0]["fit_s"]
        result["fit_s_over_native"] = {r["variant"]: round(r["fit_s"] / base, 2) for r in result["runs"]}
    else:
        for name in args.datasets.split(","):
            run: dict = {"ours": []}
            for variant in args.variants.split(","):
                dtype, scatter = variant.split("/")
                cmd = [
                    sys.executable,
                    __file__,
                    "sgd",
                    "--child",
                    name,
                    "--rank",
                    str(args.rank),
                    "--epochs",
                    str(args.epochs),
                    "--dtype",
                    dtype,
                ]
                ours, _ = run_child(cmd, ROOT, f"sgd {name} {variant}", env={"RECSYS_SCATTER_BACKEND": scatter})
                run["ours"].append(ours)
                print(json.dumps(ours), flush=True)
            if args.reference_python:
                path = SCRATCH / name / name / "ingest" / "ratings"
                out = subprocess.run([args.reference_python, "-c", REFERENCE, str(path), str(args.rank), str(args.epochs)],
                                     capture_output=True, text=True, check=True)  # fmt: skip
                run["reference"] = json.loads(out.stdout.strip().splitlines()[-1])
                run["ours_over_reference_per_epoch"] = {
                    f"{o['dtype']}/{o['scatter']}": round(o["epoch_s"] / run["reference"]["epoch_s"], 2) for o in run["ours"]
                }
            result["runs"].append(run)
            print(json.dumps({k: v for k, v in run.items() if k != "ours"}), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
