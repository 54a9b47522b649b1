"""EASE in Spark against a single-process numpy EASE, and EASE at scale on generated data.

    # the top-N protocol split of a dataset; Spark EASE and numpy EASE side by side in one process
    python benchmarks/itemitem.py reference --dataset ml-100k --l2-reg 500 \\
        --out benchmarks/results/topn/ml-100k/ease-reference.json
    # generated data: EASE fit + top-10 for every user, driver memory sampled
    python benchmarks/itemitem.py scale --ratings 5000000 --items 20000,60000 \\
        --out benchmarks/results/performance/ease-scale.json

``reference``: both fit on the same training part and rank every unseen
training item for every test user; both lists are scored by the project's
``topn_report``.  The numpy side is the textbook dense computation (``X`` as a
dense array, ``numpy.linalg.inv``, ``X @ B``, a per-user partial sort), timed
from the training rows in memory to the lists.  ``scale``: each size runs in a
fresh child process whose Python and JVM resident memory the parent samples
(``benchmarks/harness.py``); the Gram, solve and scoring times come from the
model's own ``info``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def numpy_ease(train, test_users, n_items: int, l2_reg: float, k: int):  # type: ignore[no-untyped-def]
    """Dense single-process EASE: (lists as a pandas frame, seconds)."""
    import numpy as np
    import pandas as pd

    t = time.perf_counter()
    n_users = int(train["user_idx"].max()) + 1
    x = np.zeros((n_users, n_items))
    x[train["user_idx"].to_numpy(), train["item_idx"].to_numpy()] = 1.0
    g = x.T @ x
    g[np.diag_indices(n_items)] += l2_reg
    p = np.linalg.inv(g)
    b = p / (-np.diag(p))
    b[np.diag_indices(n_items)] = 0.0
    rated = x.any(axis=0)
    users = np.sort(test_users[test_users < n_users])
    s = x[users] @ b
    s[x[users] > 0] = -np.inf
    s[:, ~rated] = -np.inf  # nobody rated it in training: not a candidate (as in Spark)
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]  # ties: the smaller item_idx
    rows = [(int(u), r + 1, int(i), float(s[j, i])) for j, u in enumerate(users) for r, i in enumerate(top[j]) if np.isfinite(s[j, i])]
    secs = time.perf_counter() - t
    return pd.DataFrame(rows, columns=["user_idx", "rank", "item_idx", "score"]), secs


def reference(args: argparse.Namespace) -> dict:
    from pyspark.sql import functions as F

    from recsys_spark import stages
    from recsys_spark.benchmark import TOPN_PROTOCOL, _with_split, dataset_overrides
    from recsys_spark.config import SplitConfig, load_config
    from recsys_spark.evaluate import topn_report
    from recsys_spark.itemitem import EASE
    from recsys_spark.logs import setup_logging
    from recsys_spark.recommender import as_topn
    from recsys_spark.spark import get_spark

    log = setup_logging("bench-itemitem")
    cfg = load_config(ROOT / "conf" / "local.toml", dataset_overrides(args.dataset))
    cfg = _with_split(cfg, SplitConfig(protocol="stratified", ratio=0.75, seed=42, valid_ratio=0.0, n_negatives=0))
    spark = get_spark(cfg.spark, cfg.checkpoint_dir, "bench itemitem reference")
    stages.run_ingest(spark, cfg)
    stages.run_split(spark, cfg)
    train = stages.read_split(spark, cfg, "train").persist()
    test = stages.read_split(spark, cfg, "test").persist()
    items = stages.read_ingested(spark, cfg, "items").persist()
    n_catalog = items.count()
    users = test.select("user_idx").distinct().persist()
    n_users = users.count()
    k = args.k
    scale = stages.rating_scale(spark, cfg)
    out: dict = {"protocol": {"name": "topn", "dataset": cfg.dataset_name, "k": k, **TOPN_PROTOCOL, "test_users": n_users},
                 "l2_reg": args.l2_reg, "weighting": "binary"}  # fmt: skip
    t = time.perf_counter()
    model = EASE(l2_reg=args.l2_reg, scale=scale).fit(train)
    top = model.recommend(users, k).persist()
    top.count()
    spark_s = time.perf_counter() - t
    res = topn_report(top, test, train, items, n_catalog, k)
    out["spark"] = {"ndcg@10": res[f"ndcg@{k}"], "precision@10": res[f"precision@{k}"], "fit_and_recommend_s": round(spark_s, 2),
                    "info": model.info}  # fmt: skip
    log.info("spark EASE: ndcg@%d %.4f in %.1fs", k, res[f"ndcg@{k}"], spark_s)
    tr = train.select("user_idx", "item_idx").toPandas()  # the reference needs the rows in memory: bounded by the dataset
    test_users = users.toPandas()["user_idx"].to_numpy()
    n_items = int(max(tr["item_idx"].max(), items.agg(F.max("item_idx")).first()[0])) + 1
    lists, numpy_s = numpy_ease(tr, test_users, n_items, args.l2_reg, k)
    ref_top = as_topn(spark.createDataFrame(lists, "user_idx int, rank int, item_idx int, score double"), "ease_numpy")
    ref = topn_report(ref_top, test, train, items, n_catalog, k)
    out["numpy"] = {"ndcg@10": ref[f"ndcg@{k}"], "precision@10": ref[f"precision@{k}"], "fit_and_recommend_s": round(numpy_s, 2)}
    log.info("numpy EASE: ndcg@%d %.4f in %.1fs", k, ref[f"ndcg@{k}"], numpy_s)
    mine = top.select("user_idx", "rank", "item_idx").toPandas()  # one list per test user
    joined = mine.merge(lists[["user_idx", "rank", "item_idx"]], on=["user_idx", "rank"], how="outer", suffixes=("", "_ref"))
    out["same_item_at_rank"] = round(float((joined["item_idx"] == joined["item_idx_ref"]).mean()), 6)
    out["spark_vs_numpy_time"] = round(spark_s / max(numpy_s, 1e-9), 2)
    spark.stop()
    return out


def scale_child(args: argparse.Namespace) -> None:
    from recsys_spark.config import load_config
    from recsys_spark.itemitem import EASE
    from recsys_spark.logs import setup_logging
    from recsys_spark.spark import get_spark
    from recsys_spark.stages import read_ingested, run_generate, run_ingest

    log = setup_logging("bench-itemitem")
    n_items = int(args.child)
    out = f"{args.scratch}/ease-{args.ratings}-{n_items}"
    overrides = [
        f'paths.output="{out}"', f"generate.n_ratings={args.ratings}", f"generate.n_items={n_items}",
        f"generate.n_users={args.users}", f'dataset.name="gen-{n_items}"', f"spark.shuffle_partitions={args.shuffle_partitions}",
        f'spark.driver_memory="{args.driver_memory}"',
    ]  # fmt: skip
    cfg = load_config(ROOT / "conf" / "local.toml", overrides)
    spark = get_spark(cfg.spark, cfg.checkpoint_dir, f"bench ease scale {n_items}")
    run_generate(spark, cfg)
    run_ingest(spark, cfg)
    ratings = read_ingested(spark, cfg).select("user_idx", "item_idx", "rating").persist()
    n = ratings.count()
    users = ratings.select("user_idx").distinct().persist()
    n_users = users.count()
    print("MARK fit", flush=True)  # noqa: T201 - protocol line for the parent
    t = time.perf_counter()
    model = EASE(l2_reg=args.l2_reg, max_items=args.max_items).fit(ratings)
    fit_s = time.perf_counter() - t
    print("MARK recommend", flush=True)  # noqa: T201
    t = time.perf_counter()
    model.recommend(users, 10).write.mode("overwrite").parquet(f"{out}/topn")
    rec_s = time.perf_counter() - t
    rows = spark.read.parquet(f"{out}/topn").count()
    result = {"ratings": n, "items_generated": n_items, "users": n_users, "fit_s": round(fit_s, 1), "recommend_s": round(rec_s, 1),
              "topn_rows": rows, "info": model.info}  # fmt: skip
    log.info("%d items: fit %.1fs, recommend %.1fs", n_items, fit_s, rec_s)
    spark.stop()
    print("RESULT " + json.dumps(result), flush=True)  # noqa: T201


def scale(args: argparse.Namespace) -> dict:
    from harness import run_child

    out = {"l2_reg": args.l2_reg, "max_items": args.max_items, "driver_memory": args.driver_memory, "runs": []}
    for n_items in args.items.split(","):
        cmd = [sys.executable, __file__, "scale", "--child", n_items, "--scratch", args.scratch, "--ratings", str(args.ratings),
               "--users", str(args.users), "--l2-reg", str(args.l2_reg), "--max-items", str(args.max_items),
               "--shuffle-partitions", str(args.shuffle_partitions), "--driver-memory", args.driver_memory]  # fmt: skip
        result, peaks = run_child(cmd, ROOT, f"ease {n_items}")
        for phase in ("fit", "recommend"):
            py, jvm = peaks.get(phase, (0, 0))
            result[f"{phase}_peak_driver_python_mib"] = round(py / 2**20)
            result[f"{phase}_peak_jvm_rss_mib"] = round(jvm / 2**20)
        out["runs"].append(result)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("reference")
    r.add_argument("--dataset", default="ml-100k")
    r.add_argument("--l2-reg", type=float, default=500.0)
    r.add_argument("--k", type=int, default=10)
    r.add_argument("--out", default=None)
    s = sub.add_parser("scale")
    s.add_argument("--ratings", type=int, default=5_000_000)
    s.add_argument("--users", type=int, default=50_000)
    s.add_argument("--items", default="20000,60000")
    s.add_argument("--l2-reg", type=float, default=500.0)
    s.add_argument("--max-items", type=int, default=20000)
    s.add_argument("--shuffle-partitions", type=int, default=16)
    s.add_argument("--driver-memory", default="12g", help="the JVM heap (local mode: driver and executors)")
    s.add_argument("--scratch", default=str(ROOT / "build" / "bench-itemitem"))
    s.add_argument("--out", default=None)
    s.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.cmd == "scale" and args.child:
        scale_child(args)
        return
    result = reference(args) if args.cmd == "reference" else scale(args)
    text = json.dumps(result, indent=2, sort_keys=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
