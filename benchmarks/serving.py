"""Latency of the served champion over HTTP on loopback, and the batch throughput of its Spark UDF.

    .venv/bin/python benchmarks/serving.py --config conf/local.toml \
        --out benchmarks/results/performance/serving-generated.json

Needs a published model (``make run`` or ``recsys-spark pipeline`` with
``publish.enabled``).  Starts ``mlflow models serve`` for
``models:/<publish.model_name>@champion`` on 127.0.0.1 (stopped by its pid at
the end), sends ``--warmup`` requests, then ``--requests`` single-user requests
one after another (users drawn with seed 42 from the final table; a tenth of
them ids the data has never seen, which get the cold-start list), each timed
from send to parsed answer, and reports p50/p90/p99/max in milliseconds per
kind.  Then it scores every user of the user table with
``mlflow.pyfunc.spark_udf`` (``local[2]``) and reports users per second, and
checks that the batch lists equal the final table's.  The figures also go
beside the evaluate stage's results (``serving.json``), where ``recsys-spark
report`` adds them to the dashboard's Serving section.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _percentiles(ms: list[float]) -> dict[str, float]:
    import numpy as np

    a = np.asarray(ms)
    return {"n": len(ms), **{f"p{q}": round(float(np.percentile(a, q)), 2) for q in (50, 90, 99)}, "max": round(float(a.max()), 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="conf/local.toml")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--out", help="write the result as JSON here")
    args = ap.parse_args(argv)

    from pyspark.sql import functions as F

    from recsys_spark import serving
    from recsys_spark.config import load_config
    from recsys_spark.io import fs
    from recsys_spark.logs import setup_logging
    from recsys_spark.spark import get_spark
    from recsys_spark.stages import layout
    from recsys_spark.stages.evaluate import SERVING
    from recsys_spark.stages.final import read_final

    log = setup_logging("benchmark-serving")
    cfg = load_config(args.config, args.overrides)
    spark = get_spark(cfg.spark, cfg.checkpoint_dir, "recsys-spark serving benchmark")
    final = read_final(spark, cfg).select("user_id", "rank", "item_id").toPandas()
    expected = {u: list(g.sort_values("rank")["item_id"]) for u, g in final.groupby("user_id")}
    rng = random.Random(42)
    known = sorted(expected)
    plan = [("unknown", f"new-user-{i}") if rng.random() < 0.1 else ("known", rng.choice(known)) for i in range(args.requests)]
    times: dict[str, list[float]] = {"known": [], "unknown": []}
    wrong = 0
    with serving.serve(cfg, log_file=Path(cfg.paths.output) / "serve.log") as url:
        def ask(uid: str) -> dict:
            body = json.dumps({"dataframe_records": [{"user_id": uid}]}).encode()
            req = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read())["predictions"][0]

        for i in range(args.warmup):
            ask(known[i % len(known)])
        log.info("serving: %d timed requests (bounded loop)", len(plan))
        for kind, uid in plan:
            t = time.perf_counter()
            pred = ask(uid)
            times[kind].append((time.perf_counter() - t) * 1000)
            ok = pred["item_ids"] == expected[uid] if kind == "known" else pred["source"] == "cold_start" and not pred["known"]
            wrong += not ok
    log.info("serving: known %s, unknown %s, wrong answers %d", _percentiles(times["known"]), _percentiles(times["unknown"]), wrong)

    udf = serving.batch_udf(spark, cfg)
    users = layout.read_ingested(spark, cfg, "user_map").select(F.col("user_id").cast("string").alias("user_id")).persist()
    n_users = users.count()
    t = time.perf_counter()
    rows = users.withColumn("rec", udf(F.struct("user_id"))).select("user_id", "rec.item_ids").collect()
    batch_s = time.perf_counter() - t
    batch = {r["user_id"]: list(r["item_ids"]) for r in rows}
    same = sum(batch.get(u) == v for u, v in expected.items())
    result = {
        "command": "benchmarks/serving.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "model_uri": f"models:/{serving.model_name(cfg)}@{cfg.publish.alias}",
        "http": {"known_ms": _percentiles(times["known"]), "unknown_ms": _percentiles(times["unknown"]), "wrong_answers": wrong,
                 "warmup": args.warmup, "server": "mlflow models serve --env-manager local -w 1 (uvicorn) on 127.0.0.1"},
        "batch_udf": {"users": n_users, "wall_s": round(batch_s, 2), "users_per_s": round(n_users / batch_s, 1),
                      "lists_equal_to_final": same, "final_users": len(expected), "master": spark.sparkContext.master},
    }  # fmt: skip
    log.info("batch: %s", result["batch_udf"])
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    # beside the evaluate stage's results: `recsys-spark report` puts these figures in the dashboard
    # (a rerun of evaluate replaces the folder, so the page never shows another model's latency)
    fs.write_text(spark, f"{layout.evaluate(cfg)}/{SERVING}", json.dumps(result, indent=2) + "\n")
    log.info("serving: figures written beside the evaluate results; `recsys-spark report` adds them to the dashboard")
    spark.stop()
    return 0 if wrong == 0 and same == len(expected) else 1


if __name__ == "__main__":
    sys.exit(main())
