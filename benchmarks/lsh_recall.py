"""Recall and time of the LSH approximate neighbours against the exact table.

    .venv/bin/python benchmarks/lsh_recall.py --dataset ml-latest-small --out benchmarks/results/performance/lsh-recall.json

Item-item, no shrinkage, on all ingested ratings: the exact neighbour table
(block kernel) against ``lsh_similarities`` for Jaccard (MinHashLSH) and the
whole-vector cosine (BucketedRandomProjectionLSH) at several numbers of hash
tables.  Recall@k: the share of each item's exact top-k (positive
similarity) found in its approximate top-k, micro-averaged.  Pairs scored:
the rows LSH compared exactly, against the pairs the exact table scores.
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

from ingest_split import overrides_for  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="ml-latest-small")
    ap.add_argument("--tables", default="2,4,8,16")
    ap.add_argument("--k", default="10,50")
    ap.add_argument("--min-sim", type=float, default=0.05)
    ap.add_argument("--scratch", default=str(ROOT / "output" / "bench-neighborhood"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from recsys_spark.config import load_config
    from recsys_spark.logs import setup_logging
    from recsys_spark.lsh import lsh_similarities, neighbor_recall
    from recsys_spark.neighbors import similarities
    from recsys_spark.spark import get_spark
    from recsys_spark.stages import read_ingested, run_generate, run_ingest

    log = setup_logging("bench-lsh")
    cfg = load_config(
        ROOT / "conf" / "local.toml", [*overrides_for(args.dataset, f"{args.scratch}/{args.dataset}"), "spark.shuffle_partitions=8"]
    )
    spark = get_spark(cfg.spark, cfg.checkpoint_dir, f"bench lsh {args.dataset}")
    if cfg.dataset.kind == "generated":
        run_generate(spark, cfg)
    run_ingest(spark, cfg)
    ratings = read_ingested(spark, cfg).select("user_idx", "item_idx", "rating").cache()
    ks = [int(k) for k in args.k.split(",")]
    rows = []
    for kind in ("jaccard", "vector_cosine"):
        t = time.perf_counter()
        exact = similarities(ratings, similarity=kind, shrinkage=0.0, kernel="blocks").cache()
        n_exact = exact.count() // 2
        exact_s = time.perf_counter() - t
        for tables in [int(x) for x in args.tables.split(",")]:
            t = time.perf_counter()
            approx = lsh_similarities(ratings, similarity=kind, num_hash_tables=tables, min_sim=args.min_sim).cache()
            n_approx = approx.count() // 2
            lsh_s = time.perf_counter() - t
            row = {"similarity": kind, "hash_tables": tables, "min_sim": args.min_sim, "lsh_s": round(lsh_s, 1),
                   "exact_s": round(exact_s, 1), "pairs_scored": n_approx, "exact_pairs": n_exact}  # fmt: skip
            for k in ks:
                # exact neighbours below min_sim cannot be found by design: recall counts them as missed
                row[f"recall@{k}"] = round(neighbor_recall(approx, exact, k), 4)
            log.info("%s", row)
            rows.append(row)
            approx.unpersist()
        exact.unpersist()
    spark.stop()
    payload = {"dataset": args.dataset, "ratings": ratings_count(cfg), "results": rows}
    print(json.dumps(payload, indent=2))  # noqa: T201 - a script's report
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(payload, indent=2) + "\n")


def ratings_count(cfg) -> int:  # type: ignore[no-untyped-def]
    manifest = json.loads(Path(cfg.stage_path("ingest", "_manifest.json")).read_text())
    return int(manifest["counts"]["ratings"])


if __name__ == "__main__":
    main()
