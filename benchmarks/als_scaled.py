"""Do scaled residuals (per-user and per-item z-scores) and backfitting lower MLlib ALS's RMSE?

    RECSYS_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/als_scaled.py \
        --out benchmarks/results/studies/als/scaled-u1-holdout.json
    RECSYS_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/als_scaled.py --grid backfit \
        --out benchmarks/results/studies/als/backfit-u1-holdout.json

Validation only: the registered ``als`` (its defaults from
``recsys_spark/conf/models/als.toml``, each row overriding some of them) is fitted on
ML-100K u1.base minus a 10% hash holdout (:func:`recsys_spark.tuning.holdout`,
the tuning studies' split) and scored on the holdout.  The first row is ALS on
plain baseline residuals, the others divide the residuals by the user's and
item's damped residual scales (``scale_residuals``, see
:mod:`recsys_spark.factorization.als`).  ``--grid backfit`` compares rounds
of backfitting (``backfit_rounds``: the biases refitted on what the factors
leave, then the factors on the new residuals).  The u1 test part is never read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (label, overrides of recsys_spark/conf/models/als.toml)
GRID: list[tuple[str, dict]] = [
    ("plain residuals", {"scale_residuals": False}),
    ("scaled, damping 0.5", {"scale_residuals": True, "scale_damping": 0.5}),
    ("scaled, damping 2", {"scale_residuals": True, "scale_damping": 2.0}),
    ("scaled, damping 5", {"scale_residuals": True, "scale_damping": 5.0}),
    ("scaled, damping 20", {"scale_residuals": True, "scale_damping": 20.0}),
    ("scaled, damping 5, reg 0.11", {"scale_residuals": True, "scale_damping": 5.0, "reg_param": 0.11}),
    ("scaled, damping 5, reg 0.14", {"scale_residuals": True, "scale_damping": 5.0, "reg_param": 0.14}),
    ("scaled, damping 5, rank 80, reg 0.13", {"scale_residuals": True, "scale_damping": 5.0, "rank": 80, "reg_param": 0.13}),
    ("scaled, damping 5, 15 iterations", {"scale_residuals": True, "scale_damping": 5.0, "max_iter": 15}),
    (
        "scaled, damping 5, baseline damping 2 / 2",
        {"scale_residuals": True, "scale_damping": 5.0, "base_reg_user": 2.0, "base_reg_item": 2.0},
    ),
    (
        "scaled, damping 5, baseline damping 5 / 5",
        {"scale_residuals": True, "scale_damping": 5.0, "base_reg_user": 5.0, "base_reg_item": 5.0},
    ),
    (
        "scaled, damping 5, baseline damping 10 / 5",
        {"scale_residuals": True, "scale_damping": 5.0, "base_reg_user": 10.0, "base_reg_item": 5.0},
    ),
]

BACKFIT: list[tuple[str, dict]] = [
    ("no backfitting", {"backfit_rounds": 0}),
    ("1 round", {"backfit_rounds": 1}),
    ("2 rounds", {"backfit_rounds": 2}),
    ("3 rounds", {"backfit_rounds": 3}),
    ("2 rounds, baseline damping 2 / 2", {"backfit_rounds": 2, "base_reg_user": 2.0, "base_reg_item": 2.0}),
    ("2 rounds, baseline damping 10 / 5", {"backfit_rounds": 2, "base_reg_user": 10.0, "base_reg_item": 5.0}),
    ("2 rounds, reg 0.11", {"backfit_rounds": 2, "reg_param": 0.11}),
    ("2 rounds, reg 0.14", {"backfit_rounds": 2, "reg_param": 0.14}),
    ("2 rounds, 15 iterations", {"backfit_rounds": 2, "max_iter": 15}),
    ("2 rounds, plain residuals", {"backfit_rounds": 2, "scale_residuals": False}),
]
GRIDS = {"scaled": GRID, "backfit": BACKFIT}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default="output", help="pipeline output directory (ingest / split cache)")
    ap.add_argument("--out", help="write the result as JSON here")
    ap.add_argument("--grid", choices=sorted(GRIDS), default="scaled", help="which comparison (default: scaled)")
    args = ap.parse_args(argv)

    import numpy as np

    from recsys_spark import registry, tuning
    from recsys_spark.config import load_config
    from recsys_spark.logs import setup_logging
    from recsys_spark.schemas import COL_ITEM, COL_PREDICTION, COL_RATING, COL_USER
    from recsys_spark.spark import get_spark

    log = setup_logging("als_scaled")
    cfg = load_config(None, [f'paths.output="{args.output}"', 'dataset.kind="ml-100k"'])
    spark = get_spark(cfg.spark, cfg.checkpoint_dir, "als scaled residuals")
    scale, fit, valid = tuning.validation_parts(spark, cfg)
    keys = [COL_USER, COL_ITEM]
    truth = valid.select(*keys, COL_RATING).orderBy(*keys).toPandas()[COL_RATING].to_numpy()

    rows = []
    grid = GRIDS[args.grid]
    for i, (label, over) in enumerate(grid, 1):
        t0 = time.time()
        model = registry.build("als", scale, over).fit(fit)
        pred = model.predict(valid.select(*keys)).orderBy(*keys).toPandas()[COL_PREDICTION].to_numpy()
        row = {
            "config": label,
            "overrides": over,
            "rmse": float(np.sqrt(np.mean((pred - truth) ** 2))),
            "fit_s": round(time.time() - t0, 1),
        }
        rows.append(row)
        log.info("[%d/%d] %s: rmse %.4f (%.0fs)", i, len(grid), label, row["rmse"], row["fit_s"])
    result = {
        "protocol": {"dataset": "ml-100k", "fold": "u1", "valid": "10% hash holdout of the training part", "rows": int(len(truth))},
        "model": "als (recsys_spark/conf/models/als.toml, overridden per row)",
        "rows": rows,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        log.info("wrote %s", args.out)
    spark.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
