"""A model's settings on the next-item protocol's validation targets (each user's second-latest rating).

    RECSYS_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/nextitem.py --dataset ml-100k \\
        --windows 1,2,3,5,10 --max-next 50,200 --out benchmarks/results/studies/nextitem/last_item-ml-100k.json
    RECSYS_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/nextitem.py --dataset ml-latest-small --model sasrec \\
        --grid epochs=20,40 --grid net.dim=64 --out benchmarks/results/studies/nextitem/sasrec-ml-latest-small.json

``--windows``/``--max-next`` are the last-item model's grid; ``--grid
KEY=V1,V2`` (repeatable, ``net.`` for the network's keys) any model's, over
the model's packaged defaults.

Each setting is fitted on the protocol's training part (everything before the
two latest ratings of each user) and ranks every unrated item for the users
with a validation target; the test targets are not read.  The settings go
through a models folder of their own (``models.models_dir``), the way a user
would try them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _toml(params: dict) -> str:
    def lit(v):
        return json.dumps(v) if not isinstance(v, bool) else str(v).lower()

    top = [f"{k} = {lit(v)}" for k, v in params.items() if not isinstance(v, dict)]
    nested = [f"\n[params.{k}]\n" + "\n".join(f"{a} = {lit(b)}" for a, b in v.items()) for k, v in params.items() if isinstance(v, dict)]
    return "[params]\n" + "\n".join(top) + "\n" + "\n".join(nested) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--model", default="last_item")
    ap.add_argument("--windows", help="last_item: window values (a grid on `window`)")
    ap.add_argument("--max-next", help="last_item: max_next values")
    ap.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="a parameter's values (net.KEY for the network)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out")
    args = ap.parse_args(argv)

    from recsys_spark import registry
    from recsys_spark.benchmark import dataset_overrides
    from recsys_spark.config import load_config
    from recsys_spark.logs import setup_logging
    from recsys_spark.nextitem import run_nextitem
    from recsys_spark.spark import get_spark

    log = setup_logging("benchmark-nextitem")
    grid = {}
    if args.windows:
        grid["window"] = [int(w) for w in args.windows.split(",")]
    if args.max_next:
        grid["max_next"] = [int(m) for m in args.max_next.split(",")]
    for g in args.grid:
        key, _, values = g.partition("=")
        grid[key] = [_value(v) for v in values.split(",")]
    base = registry.model_params(args.model)
    trials = []
    with tempfile.TemporaryDirectory() as models_dir:
        cfg = load_config(None, [*args.overrides, *dataset_overrides(args.dataset), f'models.models_dir="{models_dir}"'])
        spark = get_spark(cfg.spark, cfg.checkpoint_dir, "recsys-spark next-item study")
        for combo in itertools.product(*grid.values()):
            setting = dict(zip(grid, combo, strict=True))
            params = json.loads(json.dumps(base))
            for key, v in setting.items():
                *path, leaf = key.split(".")
                node = params
                for p in path:
                    node = node.setdefault(p, {})
                node[leaf] = v
            Path(models_dir, f"{args.model}.toml").write_text(_toml(params))
            t = time.perf_counter()
            res = run_nextitem(spark, cfg, [args.model], args.k, parts=("valid",))
            row = {**setting, **res["models"][args.model], "wall_s": round(time.perf_counter() - t, 1)}
            log.info("%s %s: ndcg@%d %.4f on validation", args.model, setting, args.k, row[f"ndcg@{args.k}_valid"])
            trials.append(row)
        protocol = res["protocol"]
        spark.stop()
    best = max(trials, key=lambda r: r[f"ndcg@{args.k}_valid"])
    out = {"command": "benchmarks/nextitem.py " + " ".join(argv if argv is not None else sys.argv[1:]), "model": args.model,
           "protocol": protocol, "read": "validation targets only", "defaults": base, "trials": trials,
           "best": {key: best[key] for key in grid}}  # fmt: skip
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    log.info("best: %s", out["best"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
