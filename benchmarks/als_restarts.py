"""Does restarting MLlib ALS from other seeds, or averaging the restarts, lower its RMSE?

    RECSYS_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/als_restarts.py \
        --out benchmarks/results/studies/als/restarts-u1-holdout.json

Validation only: the registered ``als`` (its tuned defaults from
``recsys_spark/conf/models/als.toml``) is fitted on ML-100K u1.base minus a 10% hash
holdout (:func:`recsys_spark.tuning.holdout`, the tuning studies' split) once
per seed; each fit's RMSE on the holdout and that of the running average of
the fits' predictions are reported.  The u1 test part is never read.
``studies/als/restarts-u1-holdout.json`` was run while plain residuals were the
``als`` default, ``studies/als/restarts-u1-holdout-scaled.json`` with scaled ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="42,7,123,999", help="comma-separated ALS seeds")
    ap.add_argument("--output", default="output", help="pipeline output directory (ingest / split cache)")
    ap.add_argument("--out", help="write the result as JSON here")
    args = ap.parse_args(argv)

    import numpy as np
    from pyspark.sql import functions as F

    from recsys_spark import registry, tuning
    from recsys_spark.config import load_config
    from recsys_spark.logs import setup_logging
    from recsys_spark.schemas import COL_ITEM, COL_PREDICTION, COL_RATING, COL_USER
    from recsys_spark.spark import get_spark

    log = setup_logging("als_restarts")
    cfg = load_config(None, [f'paths.output="{args.output}"', 'dataset.kind="ml-100k"'])
    spark = get_spark(cfg.spark, cfg.checkpoint_dir, "als restarts")
    scale, fit, valid = tuning.validation_parts(spark, cfg)
    keys = [COL_USER, COL_ITEM]
    truth = valid.select(*keys, COL_RATING).orderBy(*keys).toPandas()[COL_RATING].to_numpy()
    lo, hi = scale.lo, scale.hi

    rows, preds = [], []
    for seed in [int(s) for s in args.seeds.split(",")]:
        t0 = time.time()
        model = registry.build("als", scale, {"seed": seed}).fit(fit)
        pred = model.predict(valid.select(*keys)).orderBy(*keys).select(F.col(COL_PREDICTION)).toPandas()[COL_PREDICTION].to_numpy()
        preds.append(pred)
        avg = np.clip(np.mean(preds, axis=0), lo, hi)
        row = {
            "seed": seed,
            "rmse": float(np.sqrt(np.mean((pred - truth) ** 2))),
            "average_of_fits": len(preds),
            "average_rmse": float(np.sqrt(np.mean((avg - truth) ** 2))),
            "fit_s": round(time.time() - t0, 1),
        }
        rows.append(row)
        log.info("seed %d: rmse %.4f; average of %d fits %.4f (%.0fs)", seed, row["rmse"], len(preds), row["average_rmse"], row["fit_s"])
    result = {
        "protocol": {"dataset": "ml-100k", "fold": "u1", "valid": "10% hash holdout of the training part", "rows": int(len(truth))},
        "model": "als (recsys_spark/conf/models/als.toml)",
        "rows": rows,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        log.info("wrote %s", args.out)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
