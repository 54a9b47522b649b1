"""How close the generated data is to real rating logs, and what its generator costs.

    .venv/bin/python benchmarks/generated_data.py calibrate \\
        --out benchmarks/results/studies/generated/calibration.json
    .venv/bin/python benchmarks/generated_data.py calibrate --datasets generated \\
        --variant "taste=0" --variant "taste=2" --set generate.seed=7 --out /tmp/grid.json
    .venv/bin/python benchmarks/generated_data.py timing --sizes 1m,5m,20m \\
        --out benchmarks/results/performance/generate.json

``calibrate`` prints, per dataset (the generated data at its default size,
``ml-100k``, ``ml-latest-small``), the shape of the log (item-popularity Gini
over the rated items, ratings per user: median and 90th percentile, the
rating histogram) and the top-N protocol of ``recsys-spark benchmark topn``
(per-user stratified 75/25, seed 42, every unrated training item ranked,
k = 10) for popularity and a few personalised models: the best personalised
NDCG@10 over popularity's, and the paired bootstrap 95% interval of the
per-user difference.  ``--variant`` adds generated datasets with
``generate.*`` overrides (``taste=1.5,candidates=4``); ``--set`` applies an
override to every generated one (a different seed for choosing defaults, so
the default data's own figures are read once).

``timing`` generates ``1m``/``5m``/``20m`` ratings (the shapes of
``benchmarks/ingest_split.py``) with the generator before selection by taste
(``POPULARITY_SETTINGS``) and with the defaults, alternately in one process,
and reports the wall time of each and their ratio.  ``--code DIR`` times the
generator of another checkout instead (``git worktree add /tmp/before REV``),
for a before/after pair.

Real datasets need ``$RECSYS_DATA_DIR``; outputs go under ``build/generated-data``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _code_dir(argv: list[str]) -> Path:
    """``timing --code DIR``: import the library from another checkout (read before the imports below)."""
    for i, a in enumerate(argv):
        if a == "--code" and i + 1 < len(argv):
            return Path(argv[i + 1]).resolve()
        if a.startswith("--code="):
            return Path(a.split("=", 1)[1]).resolve()
    return ROOT


CODE = _code_dir(sys.argv)
sys.path.insert(0, str(CODE))

from recsys_spark import stages  # noqa: E402
from recsys_spark.benchmark import dataset_overrides, run_topn  # noqa: E402
from recsys_spark.config import load_config  # noqa: E402

try:
    from recsys_spark.generate import POPULARITY_SETTINGS  # noqa: E402
except ImportError:  # an older checkout (timing --code): it has one generator
    POPULARITY_SETTINGS = {}
from recsys_spark.logs import setup_logging  # noqa: E402
from recsys_spark.metrics import paired_bootstrap  # noqa: E402
from recsys_spark.schemas import COL_ITEM, COL_RATING, COL_USER  # noqa: E402
from recsys_spark.spark import get_spark  # noqa: E402

log = logging.getLogger("recsys_spark.jobs.generated_data")

SIZES = {  # the shapes benchmarks/ingest_split.py generates
    "1m": {"n_users": 6000, "n_items": 4000, "n_ratings": 1_000_000},
    "5m": {"n_users": 30000, "n_items": 10000, "n_ratings": 5_000_000},
    "20m": {"n_users": 120000, "n_items": 25000, "n_ratings": 20_000_000},
}
PERSONALISED = ["item_knn", "user_knn", "als_implicit"]
SCRATCH = ROOT / "build" / "generated-data"
# the generator before selection by taste, as the "popularity" side of the timing
BEFORE_TASTE = [f"generate.{k}={v!r}".replace("'", '"') for k, v in POPULARITY_SETTINGS.items()]


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts (0: all equal; near 1: all in one)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n = len(x)
    if n == 0 or x.sum() == 0:
        return 0.0
    return float((2 * np.arange(1, n + 1) - n - 1).dot(x) / (n * x.sum()))


def log_shape(spark: Any, cfg: Any) -> dict[str, Any]:
    """Gini of item popularity, ratings per user and the rating histogram of the ingested ratings."""
    from pyspark.sql import functions as F

    ratings = stages.read_ingested(spark, cfg)
    per_item = np.array([r[0] for r in ratings.groupBy(COL_ITEM).count().select("count").collect()])  # one per item
    per_user = np.array([r[0] for r in ratings.groupBy(COL_USER).count().select("count").collect()])  # one per user
    hist = {float(r[0]): r[1] for r in ratings.groupBy(F.col(COL_RATING)).count().collect()}  # one per rating value
    total = sum(hist.values())
    return {
        "ratings": int(total),
        "users": len(per_user),
        "rated_items": len(per_item),
        "item_gini": round(gini(per_item), 4),
        "ratings_per_user_median": float(np.median(per_user)),
        "ratings_per_user_p90": float(np.percentile(per_user, 90)),
        "rating_histogram": {f"{v:g}": round(n / total, 4) for v, n in sorted(hist.items())},
        "mean_rating": round(sum(v * n for v, n in hist.items()) / total, 4),
    }


def calibrate_one(spark: Any, label: str, overrides: list[str], models: list[str], k: int) -> dict[str, Any]:
    cfg = load_config(ROOT / "conf" / "local.toml", [f'paths.output="{SCRATCH / label}"', *overrides])
    t = time.perf_counter()
    if cfg.dataset.kind == "generated":
        stages.run_generate(spark, cfg)
    stages.run_ingest(spark, cfg)
    shape = log_shape(spark, cfg)
    per_user: dict[str, Any] = {}
    top = run_topn(spark, cfg, ["popularity", *models], k, per_user=per_user)
    key = f"ndcg@{k}"
    ndcg = {name: round(m[key], 4) for name, m in top["models"].items()}
    best = max(models, key=lambda n: ndcg[n])
    a, b = per_user[best][key], per_user["popularity"][key].reindex(per_user[best].index)
    paired = paired_bootstrap(a.to_numpy(), b.to_numpy())
    out = {
        "overrides": overrides,
        **shape,
        "ndcg": ndcg,
        "best_personalised": best,
        "ratio_to_popularity": round(ndcg[best] / ndcg["popularity"], 3) if ndcg["popularity"] > 0 else None,
        "paired_vs_popularity": {x: (round(v, 4) if isinstance(v, float) else v) for x, v in paired.items()},
        "wall_s": round(time.perf_counter() - t, 1),
    }
    log.info(
        "%s: gini %.3f, per user median %g p90 %g; ndcg %s; %s / popularity = %s (paired diff %.4f [%.4f, %.4f])",
        label, out["item_gini"], out["ratings_per_user_median"], out["ratings_per_user_p90"], ndcg, best,
        out["ratio_to_popularity"], paired["diff"], paired["ci95_lo"], paired["ci95_hi"],
    )  # fmt: skip
    return out


def calibrate(args: argparse.Namespace) -> dict[str, Any]:
    cfg0 = load_config(ROOT / "conf" / "local.toml")
    spark = get_spark(cfg0.spark, str(SCRATCH / "checkpoints"), "generated-data calibrate")
    runs: dict[str, Any] = {}
    common = [o if o.startswith("generate.") else f"generate.{o}" for o in args.set]
    for name in [d for d in args.datasets.split(",") if d]:
        over = [*dataset_overrides(name), *(common if name == "generated" else [])]
        runs[name] = calibrate_one(spark, name, over, args.models.split(","), args.k)
    for i, variant in enumerate(args.variant):
        over = [*dataset_overrides("generated"), *common, *(f"generate.{kv.strip()}" for kv in variant.split(",") if kv.strip())]
        runs[f"generated[{variant}]"] = calibrate_one(spark, f"variant-{i}", over, args.models.split(","), args.k)
    return {"protocol": {"name": "topn", "split": "stratified", "ratio": 0.75, "seed": 42, "k": args.k}, "runs": runs}


def timing(args: argparse.Namespace) -> dict[str, Any]:
    base = load_config(CODE / "conf" / "local.toml", ['spark.driver_memory="6g"', "spark.shuffle_partitions=8"])
    spark = get_spark(base.spark, str(SCRATCH / "checkpoints"), "generated-data timing")
    rows = []
    for size in args.sizes.split(","):
        shape = [f"generate.{k}={v}" for k, v in SIZES[size].items()]
        row: dict[str, Any] = {"size": size, **SIZES[size]}
        runs = (("popularity", BEFORE_TASTE), ("taste", [])) if CODE == ROOT else (("checkout", []),)
        for rep in range(args.repeats):
            for selection, settings in runs:
                cfg = load_config(
                    CODE / "conf" / "local.toml", [f'paths.output="{SCRATCH / ("timing-" + size)}"', *shape, *settings]
                )
                t = time.perf_counter()
                res = stages.run_generate(spark, cfg, force=True)
                s = round(time.perf_counter() - t, 1)
                row.setdefault(f"{selection}_s", []).append(s)
                row[f"{selection}_ratings"] = res["counts"]["ratings"]
                log.info("%s %s (repeat %d): %.1f s, %d ratings", size, selection, rep, s, res["counts"]["ratings"])
        if "taste_s" in row:
            row["ratio"] = round(min(row["taste_s"]) / min(row["popularity_s"]), 2)
        rows.append(row)
    code = {"code": str(CODE), "commit": _commit(CODE)}
    return {"machine": {"cpus": 2, "python": platform.python_version()}, "spark": {"master": base.spark.master}, **code, "results": rows}


def _commit(path: Path) -> str:
    import subprocess

    res = subprocess.run(["git", "-C", str(path), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return res.stdout.strip()  # "-dirty": the working tree had changes not yet committed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("calibrate")
    c.add_argument("--datasets", default="generated,ml-100k,ml-latest-small")
    c.add_argument("--variant", action="append", default=[], help="generate.* overrides of one more generated dataset")
    c.add_argument("--set", action="append", default=[], help="a generate.* override for every generated dataset")
    c.add_argument("--models", default=",".join(PERSONALISED))
    c.add_argument("--k", type=int, default=10)
    c.add_argument("--out")
    t = sub.add_parser("timing")
    t.add_argument("--sizes", default="1m,5m,20m")
    t.add_argument("--repeats", type=int, default=1)
    t.add_argument("--code", help="a checkout to import the library from (e.g. a git worktree of an earlier commit)")
    t.add_argument("--out")
    args = ap.parse_args()
    setup_logging("benchmark")
    result = calibrate(args) if args.cmd == "calibrate" else timing(args)
    text = json.dumps(result, indent=2) + "\n"
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
