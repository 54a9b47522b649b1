"""The last-item model's settings on the next-item protocol's validation targets (each user's second-latest rating).

    RECSYS_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/nextitem.py --dataset ml-100k \\
        --windows 1,2,3,5,10 --max-next 50,200 --out benchmarks/results/studies/nextitem/last_item-ml-100k.json

Each setting is fitted on the protocol's training part (everything before the
two latest ratings of each user) and ranks every unrated item for the users
with a validation target; the test targets are not read.  The settings go
through a models folder of their own (``models.models_dir``), the way a user
would try them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--windows", default="1,2,3,5")
    ap.add_argument("--max-next", default="200")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out")
    args = ap.parse_args(argv)

    from recsys_spark.benchmark import dataset_overrides
    from recsys_spark.config import load_config
    from recsys_spark.logs import setup_logging
    from recsys_spark.nextitem import run_nextitem
    from recsys_spark.spark import get_spark

    log = setup_logging("benchmark-nextitem")
    trials = []
    with tempfile.TemporaryDirectory() as models_dir:
        cfg = load_config(None, [*args.overrides, *dataset_overrides(args.dataset), f'models.models_dir="{models_dir}"'])
        spark = get_spark(cfg.spark, cfg.checkpoint_dir, "recsys-spark next-item study")
        for window in [int(w) for w in args.windows.split(",")]:
            for max_next in [int(m) for m in args.max_next.split(",")]:
                Path(models_dir, "last_item.toml").write_text(f"[params]\nwindow = {window}\nmax_next = {max_next}\n")
                t = time.perf_counter()
                res = run_nextitem(spark, cfg, ["last_item"], args.k, parts=("valid",))
                row = {"window": window, "max_next": max_next, **res["models"]["last_item"], "wall_s": round(time.perf_counter() - t, 1)}
                log.info("window %d, max_next %d: ndcg@%d %.4f on validation", window, max_next, args.k, row[f"ndcg@{args.k}_valid"])
                trials.append(row)
        protocol = res["protocol"]
        spark.stop()
    best = max(trials, key=lambda r: r[f"ndcg@{args.k}_valid"])
    out = {"command": "benchmarks/nextitem.py " + " ".join(argv if argv is not None else sys.argv[1:]), "protocol": protocol,
           "read": "validation targets only", "trials": trials,
           "best": {"window": best["window"], "max_next": best["max_next"]}}  # fmt: skip
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    log.info("best: %s", out["best"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
