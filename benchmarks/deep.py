"""Deep models: selection on validation, loader throughput, training time, leave-last-out.

    RECSYS_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/deep.py sweep --model autorec --grid '{"l2": [10, 100]}'
    RECSYS_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/deep.py sweep --model neumf --grid '{"lr": [0.001]}'
    .venv/bin/python benchmarks/deep.py loader --rows 1000000
    .venv/bin/python benchmarks/deep.py scale --rows 1000000 5000000 --epochs 1
    RECSYS_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/deep.py lastout --dataset ml-latest-small --models gmf mlp neumf
    RECSYS_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/deep.py ctr --dataset ml-100k --models fm deepfm neumf
    RECSYS_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/deep.py rating --models fm_explicit --reference deepfm_explicit

* ``sweep``: a grid over a registered deep model's parameters.  Rating
  models (autorec, neumf_explicit) train on ML-100K ``u1.base`` and are
  scored on a 10% hash holdout of it (the model's own early-stopping
  holdout, ``refit`` off); top-N models train on the training part of the
  top-N protocol (ML-100K, per-user 75/25, seed 42) minus a per-user 20%
  validation carve (seed 7) and are scored by NDCG@10 over all unrated items
  on that carve.  No protocol test part is read: the chosen values can be the
  defaults in ``recsys_spark/conf/models/*.toml``.
* ``loader``: samples/s of a training step (GMF, batch 1024) fed by the Arrow
  loader, the petastorm loader (when importable) and the same tensors held in
  memory, on generated interactions.
* ``scale``: seconds per NCF epoch on generated interactions, a plain local
  function vs TorchDistributor with 2 processes (Spark tasks).
* ``rating``: the rating protocol (ML-100K u1..u5) with each model paired
  against a reference on the per-rating errors (e.g. FM against DeepFM: the
  deep part's effect, with its interval).
* ``ctr``: AUC / log loss of implicit networks on held-out rating >= 4
  positives against as many sampled unrated items (top-N protocol split), and
  DeepFM's field-interaction table and heat-map.
* ``lastout``: leave-last-out by timestamp, HR@10 / NDCG@10 of the held-out
  item against 99 sampled unrated items (the NCF paper's protocol).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

log = logging.getLogger("benchmark.deep")


def _session(dataset: str, split: list[str]):  # type: ignore[no-untyped-def]
    from recsys_spark import stages
    from recsys_spark.benchmark import dataset_overrides
    from recsys_spark.config import load_config
    from recsys_spark.logs import setup_logging
    from recsys_spark.spark import get_spark

    setup_logging("benchmark")
    cfg = load_config(ROOT / "conf" / "local.toml", [*dataset_overrides(dataset), *split])
    spark = get_spark(cfg.spark, cfg.checkpoint_dir, f"deep benchmark {dataset}")
    if cfg.dataset.kind == "generated":
        stages.run_generate(spark, cfg)
    stages.run_ingest(spark, cfg)
    stages.run_split(spark, cfg)
    return spark, cfg


def sweep(args: argparse.Namespace) -> dict:
    from recsys_spark import metrics as M
    from recsys_spark import registry, stages
    from recsys_spark import split as spl

    _, task = registry.REGISTRY[args.model]
    rating = task.startswith("rating")
    if rating:
        spark, cfg = _session("ml-100k", ["split.protocol=ml100k_folds"])
        fit_on = stages.read_split(spark, cfg, "train", fold=1).persist()
        valid = None
    else:
        spark, cfg = _session(
            args.dataset, ["split.protocol=stratified", "split.ratio=0.75", "split.seed=42", "split.valid_ratio=0.0", "split.n_negatives=0"]
        )
        carved = spl.stratified_split(stages.read_split(spark, cfg, "train"), 0.8, seed=7)
        fit_on = carved.where("part = 'train'").drop("part").persist()
        valid = carved.where("part = 'test'").drop("part").persist()
    scale = stages.rating_scale(spark, cfg)
    side = stages.side_data(spark, cfg) if registry.uses_side(args.model) else None  # deepfm's fields
    grid = json.loads(args.grid)
    keys = sorted(grid)
    rows = []
    for values in itertools.product(*[grid[k] for k in keys]):
        params = dict(zip(keys, values, strict=True))
        t = time.perf_counter()
        over = {**params, "refit": False} if rating else params
        model = registry.build(args.model, scale, over).fit_with(fit_on, side)
        row = {"params": params, "best_epoch": model.info["best_epoch"], "valid_" + (model.info["metric"] or "none"): model.info["valid"]}
        if not rating:
            top = model.recommend(valid.select("user_idx").distinct(), 10).persist()
            row["ndcg@10"] = M.ranking_metrics(top, valid, 10).metrics["ndcg@10"]
            top.unpersist()
        row["s"] = round(time.perf_counter() - t, 1)
        log.info("%s %s -> %s", args.model, params, row)
        rows.append(row)
    key = "valid_rmse" if rating else "ndcg@10"
    best = (min if rating else max)(rows, key=lambda r: r[key])
    return {"model": args.model, "selection": key, "dataset": "ml-100k u1.base" if rating else args.dataset, "rows": rows, "best": best}


# -- loader throughput --------------------------------------------------------------------
def _generated_interactions(path: Path, rows: int, n_users: int, n_items: int, seed: int = 0, row_group: int = 65536) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    per_file = 1_000_000
    for j, s in enumerate(range(0, rows, per_file)):
        n = min(per_file, rows - s)
        t = pa.table({
            "user_idx": pa.array(rng.integers(0, n_users, n).astype(np.int32)),
            "item_idx": pa.array(rng.zipf(1.3, n).clip(1, n_items).astype(np.int32) - 1),
            "rating": pa.array(rng.integers(1, 6, n).astype(np.float32)),
        })  # fmt: skip
        pq.write_table(t, path / f"part-{j:05d}.parquet", row_group_size=row_group)


def loader(args: argparse.Namespace) -> dict:
    import torch

    from recsys_spark.torch import data as td
    from recsys_spark.torch.models import GMF

    torch.set_num_threads(args.threads)
    n_users, n_items = 50_000, 20_000
    out: dict = {"rows": args.rows, "batch_size": args.batch, "model": f"GMF dim {args.dim}", "threads": args.threads, "runs": {}}
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "interactions"
        _generated_interactions(path, args.rows, n_users, n_items)
        cols = {"user_idx": torch.int64, "item_idx": torch.int64, "rating": torch.float32}
        mem = td.read_columns(str(path), list(cols))
        mem_t = {c: torch.from_numpy(mem[c]).to(dt) for c, dt in cols.items()}

        def in_memory(epoch):
            g = torch.Generator().manual_seed(epoch)
            perm = torch.randperm(args.rows, generator=g)
            for s in range(0, args.rows, args.batch):
                idx = perm[s : s + args.batch]
                yield {c: v[idx] for c, v in mem_t.items()}

        def step_all(batches, net, opt):
            n = 0
            for b in batches:
                loss = torch.nn.functional.mse_loss(net(b["user_idx"], b["item_idx"]), b["rating"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                n += len(b["rating"])
            return n

        backends = {"in_memory": lambda e: in_memory(e)}
        backends["arrow"] = lambda e: _epoch(td.ArrowDataset(str(path), cols, args.batch, shuffle=True, seed=0), e)
        try:
            import petastorm  # noqa: F401

            backends["petastorm"] = lambda e: _epoch(td.PetastormDataset(str(path), cols, args.batch, shuffle=True, seed=0), e)
        except ImportError:
            out["petastorm"] = "not importable in this environment (see constraints-petastorm.txt)"
        for rep in range(args.repeats):  # interleaved, so drift on a noisy machine hits every backend
            for name, make in backends.items():
                torch.manual_seed(0)
                net = GMF(n_users, n_items, args.dim, explicit=True, mu=3.0)
                opt = torch.optim.SGD(net.parameters(), lr=0.01)
                t = time.perf_counter()
                n = step_all(make(rep), net, opt)
                secs = time.perf_counter() - t
                out["runs"].setdefault(name, []).append({"samples": n, "s": round(secs, 3), "samples_per_s": round(n / secs)})
                log.info("loader %s rep %d: %d samples in %.2fs (%.0f/s)", name, rep, n, secs, n / secs)
    best = {k: max(r["samples_per_s"] for r in v) for k, v in out["runs"].items()}
    out["best_samples_per_s"] = best
    out["ratio_to_in_memory"] = {k: round(v / best["in_memory"], 3) for k, v in best.items()}
    return out


def _epoch(ds, epoch):
    ds.set_epoch(epoch)
    return iter(ds)


# -- training time: local vs TorchDistributor ---------------------------------------------
def scale(args: argparse.Namespace) -> dict:
    from pyspark.sql import SparkSession

    from recsys_spark.logs import setup_logging
    from recsys_spark.torch.train import TrainSpec, run

    setup_logging("benchmark")
    spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").appName("deep scale").getOrCreate()
    n_users, n_items = 50_000, 20_000
    out: dict = {"model": args.model, "epochs": args.epochs, "batch_size": args.batch, "sizes": {}}
    with tempfile.TemporaryDirectory() as d:
        for rows in args.rows:
            path = Path(d) / f"i{rows}"
            _generated_interactions(path, rows, n_users, n_items, row_group=65536)
            res = {}
            for mode in ("local", "spark"):
                spec = TrainSpec(kind=args.model, data=str(path), n_users=n_users, n_items=n_items, out_dir=f"{d}/out_{rows}_{mode}",
                                 epochs=args.epochs, batch_size=args.batch, n_neg=args.n_neg, net={"dim": 32})  # fmt: skip
                t = time.perf_counter()
                r = run(spec, mode, num_processes=2)
                wall = time.perf_counter() - t
                per_epoch = [h["seconds"] for h in r["history"]]
                res[mode] = {
                    "wall_s": round(wall, 2),
                    "epoch_s": per_epoch,
                    "world_size": r["world_size"],
                    "rank0_samples": r["history"][0]["samples"],
                }
                log.info("scale %s rows %d: epochs %s (wall %.1fs)", mode, rows, per_epoch, wall)
            res["epoch_ratio_spark_to_local"] = round(min(res["spark"]["epoch_s"]) / min(res["local"]["epoch_s"]), 3)
            out["sizes"][rows] = res
    spark.stop()
    return out


# -- leave-last-out with sampled negatives -------------------------------------------------
def lastout(args: argparse.Namespace) -> dict:
    from recsys_spark import registry, stages
    from recsys_spark.torch.evaluate import leave_last_out, sampled_ranking

    spark, cfg = _session(args.dataset, ["split.protocol=stratified", "split.valid_ratio=0.0"])
    ratings = stages.read_ingested(spark, cfg).persist()
    train, test = leave_last_out(ratings)
    train = train.persist()
    scale_ = stages.rating_scale(spark, cfg)
    out: dict = {"protocol": {"name": "leave-last-out", "dataset": args.dataset, "negatives": 99, "seed": 42}, "models": {}}
    for name in args.models:
        t = time.perf_counter()
        model = registry.build(name, scale_).fit(train)
        fit_s = time.perf_counter() - t
        res = sampled_ranking(model, ratings, test, negatives=99, k=10, seed=42)
        res.update({"fit_s": round(fit_s, 1), "best_epoch": getattr(model, "info", {}).get("best_epoch")})
        out["models"][name] = res
        log.info("lastout %s: HR@10 %.4f NDCG@10 %.4f (fit %.0fs)", name, res["hr@10"], res["ndcg@10"], fit_s)
    return out


def _overrides(pairs: list[str]) -> dict:
    """``KEY=VALUE`` (VALUE as JSON where it parses) into a parameter dict."""
    out = {}
    for p in pairs or []:
        key, _, value = p.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def ctr(args: argparse.Namespace) -> dict:
    """AUC and log loss of implicit networks on the top-N protocol's test part (rating >= 4 positives).

    Training: the protocol's training part (per-user stratified 75/25, seed 42);
    each model early-stops on its own hash holdout of it.  Test: every test
    rating >= ``--positive-min`` of a user and item the network knows is a
    positive; each gets one negative, an item of the training catalogue the
    user rated neither in training nor in test (uniform, seed 42).  Scores are
    the networks' logits (log loss through the sigmoid: networks trained with
    4 negatives per positive put their prior at 1:4, so log loss on this 1:1
    sample is not calibrated; AUC does not depend on it).  DeepFM-family
    models also get the field-interaction table (mean |<v_f, v_g>| over the
    training ratings) and its heat-map beside ``--out``.
    """
    import pandas as pd
    import torch
    from pyspark.sql import functions as F

    from recsys_spark import registry, stages
    from recsys_spark.metrics import auc_logloss
    from recsys_spark.torch.fm import plot_interactions
    from recsys_spark.torch.train import _pos_keys, _sample_negatives

    spark, cfg = _session(
        args.dataset, ["split.protocol=stratified", "split.ratio=0.75", "split.seed=42", "split.valid_ratio=0.0", "split.n_negatives=0"]
    )
    train = stages.read_split(spark, cfg, "train").persist()
    test = stages.read_split(spark, cfg, "test").persist()
    scale_ = stages.rating_scale(spark, cfg)
    side = stages.side_data(spark, cfg)
    tr = train.select("user_idx", "item_idx", "timestamp").toPandas()  # bounded: this benchmark's dataset
    te = test.select("user_idx", "item_idx", "rating", "timestamp").toPandas()
    n_items = int(tr["item_idx"].max()) + 1
    known_u, known_i = set(tr["user_idx"]), np.unique(tr["item_idx"].to_numpy())
    pos = te[(te["rating"] >= args.positive_min) & te["user_idx"].isin(known_u) & te["item_idx"].isin(set(known_i))]
    rated = pd.concat([tr[["user_idx", "item_idx"]], te[["user_idx", "item_idx"]]])
    keys = _pos_keys(rated["user_idx"].to_numpy(), rated["item_idx"].to_numpy(), n_items)
    rng = np.random.default_rng(42)
    neg_items = _sample_negatives(pos["user_idx"].to_numpy().astype(np.int64), n_items, keys, rng)
    # a negative outside the training catalogue would be unknown to the networks: redraw from the catalogue
    bad = ~np.isin(neg_items, known_i)
    while bad.any():
        neg_items[bad] = _sample_negatives(pos["user_idx"].to_numpy()[bad].astype(np.int64), n_items, keys, rng)
        bad = ~np.isin(neg_items, known_i)
    pairs = pd.DataFrame({
        "user_idx": np.concatenate([pos["user_idx"].to_numpy(), pos["user_idx"].to_numpy()]).astype(np.int32),
        "item_idx": np.concatenate([pos["item_idx"].to_numpy(), neg_items]).astype(np.int32),
        "timestamp": np.concatenate([pos["timestamp"].to_numpy(), pos["timestamp"].to_numpy()]).astype(np.int64),
        "label": np.concatenate([np.ones(len(pos)), np.zeros(len(pos))]),
    })  # fmt: skip
    sdf = spark.createDataFrame(pairs).persist()
    out: dict = {
        "protocol": {"name": "ctr", "dataset": args.dataset, "split": "stratified 75/25 seed 42", "positive_min": args.positive_min,
                     "overrides": _overrides(args.set),
                     "negatives_per_positive": 1, "seed": 42, "test_positives_dropped_unknown": int(
                         ((te["rating"] >= args.positive_min)).sum() - len(pos))},
        "models": {},
    }  # fmt: skip
    for name in args.models:
        t = time.perf_counter()
        model = registry.build(name, scale_, _overrides(args.set)).fit_with(train, side)
        fit_s = time.perf_counter() - t
        cols = [F.col("user_idx"), F.col("item_idx"), *model._ts_args(sdf)]
        scored = sdf.withColumn("score", model.score_udf()(*cols)).select("label", "score").toPandas()
        res = auc_logloss(scored["label"].to_numpy(), scored["score"].to_numpy())
        res.update({"fit_s": round(fit_s, 1), "best_epoch": model.info.get("best_epoch"), "valid": model.info.get("valid")})
        if model.kind == "deepfm":
            net = model.network()
            with torch.no_grad():
                m = net.interactions(torch.from_numpy(tr["user_idx"].to_numpy().astype(np.int64)),
                                     torch.from_numpy(tr["item_idx"].to_numpy().astype(np.int64)),
                                     torch.from_numpy(tr["timestamp"].fillna(-1).to_numpy().astype(np.int64)))  # fmt: skip
            res["interactions"] = {"fields": net.order, "mean_abs_dot": np.round(m, 6).tolist()}
            f = net.order
            pairs_ranked = sorted(((m[a, b], f[a], f[b]) for a in range(len(m)) for b in range(a + 1, len(m))), reverse=True)
            res["strongest_pairs"] = [{"fields": [fa, fb], "mean_abs_dot": round(float(v), 6)} for v, fa, fb in pairs_ranked[:10]]
            if args.out:
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                png = str(Path(args.out).with_name(f"{Path(args.out).stem}-{name}-interactions.png"))
                plot_interactions(m, net.order, png, f"{name} field interactions ({args.dataset})")
                full = Path(png).resolve()
                res["heatmap"] = str(full.relative_to(ROOT)) if full.is_relative_to(ROOT) else str(full)
        out["models"][name] = res
        log.info("ctr %s: AUC %.4f log loss %.4f (fit %.0fs)", name, res["auc"], res["log_loss"], fit_s)
    return out


def rating(args: argparse.Namespace) -> dict:
    """The rating protocol (ML-100K u1..u5) for ``--models``, with every model paired against ``--reference``.

    The comparison is over the per-rating errors of all five folds' test
    rows (significance.compare_all: RMSE difference, bootstrap 95% interval
    over (fold, user) groups, paired t and Wilcoxon on squared errors, Holm);
    ``diff > 0``: the reference has the lower RMSE.
    """
    from recsys_spark import significance
    from recsys_spark.benchmark import parse_folds, run_rating

    spark, cfg = _session("ml-100k", ["split.protocol=ml100k_folds"])
    errors: dict = {}
    models = list(dict.fromkeys([args.reference, *args.models]))
    out = run_rating(spark, cfg, models, parse_folds(args.folds), errors=errors)
    first = errors[models[0]]
    for m in models[1:]:  # the same rows in the same order (sorted by fold, user, item)
        assert (errors[m][["fold", "user_idx", "item_idx"]].to_numpy() == first[["fold", "user_idx", "item_idx"]].to_numpy()).all()
    groups = (first["fold"].to_numpy().astype(np.int64) * 10_000_000 + first["user_idx"].to_numpy()).astype(np.int64)
    values = {m: errors[m]["err"].to_numpy() for m in models}
    out["paired"] = {"metric": "rmse", "diff": "model - reference (RMSE; > 0: the reference is better)", "reference": args.reference,
                     "rows": significance.compare_all(values, [args.reference], higher_is_better=False, users=groups)}  # fmt: skip
    for r in out["paired"]["rows"]:
        log.info("rating %s vs %s: %+.4f [%+.4f, %+.4f]", r["model"], r["reference"], r["diff"], r["ci95_lo"], r["ci95_hi"])
    return out


def epochs1m(args: argparse.Namespace) -> dict:
    """Seconds per training epoch and peak memory of registered models on generated data (``--rows`` ratings).

    The project's generator (taste selection, genre-drift order, demographics,
    tags, timestamps) at ``--rows`` ratings, ingested; each model is fitted
    with its packaged defaults except ``epochs`` (``--epochs``) and no
    early-stopping holdout, inside a cost meter (driver Python, JVM and
    Python-worker peaks).
    """
    from recsys_spark import registry, stages
    from recsys_spark.costs import CostMeter

    n_users, n_items = args.users, args.items
    spark, cfg = _session(
        "generated",
        [f"generate.n_ratings={args.rows}", f"generate.n_users={n_users}", f"generate.n_items={n_items}", "split.protocol=stratified"],
    )
    train = stages.read_ingested(spark, cfg).select("user_idx", "item_idx", "rating", "timestamp").persist()
    rows = train.count()
    side = stages.side_data(spark, cfg)
    scale_ = stages.rating_scale(spark, cfg)
    out: dict = {"rows": rows, "users": n_users, "items": n_items, "epochs": args.epochs, "models": {}}
    for name in args.models:
        over = {"epochs": args.epochs}
        if registry.is_deep(name):
            over["valid_fraction"] = 0.0
        else:
            over["holdout"] = False
        with CostMeter(spark) as meter:
            with meter.phase("fit"):
                model = registry.build(name, scale_, over).fit_with(train, side)
        info = getattr(model, "info", {})
        hist = info.get("history", [])
        secs = info.get("epoch_s") or [h["seconds"] for h in hist if isinstance(h, dict) and "seconds" in h]  # sequence / pair models
        out["models"][name] = {**meter.result(), "epoch_s": secs}
        log.info("%s at %d ratings: epochs %s, %s", name, rows, secs, meter.result())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sweep")
    s.add_argument("--model", required=True)
    s.add_argument("--grid", required=True)
    s.add_argument("--dataset", default="ml-100k")
    s = sub.add_parser("loader")
    s.add_argument("--rows", type=int, default=1_000_000)
    s.add_argument("--batch", type=int, default=1024)
    s.add_argument("--dim", type=int, default=32)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--repeats", type=int, default=3)
    s = sub.add_parser("scale")
    s.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000])
    s.add_argument("--model", default="neumf")
    s.add_argument("--epochs", type=int, default=1)
    s.add_argument("--batch", type=int, default=1024)
    s.add_argument("--n-neg", type=int, default=1)
    s = sub.add_parser("lastout")
    s.add_argument("--dataset", default="ml-latest-small")
    s.add_argument("--models", nargs="+", default=["gmf", "mlp", "neumf"])
    s = sub.add_parser("epochs1m")
    s.add_argument("--rows", type=int, default=1_000_000)
    s.add_argument("--users", type=int, default=10_000)
    s.add_argument("--items", type=int, default=5_000)
    s.add_argument("--epochs", type=int, default=2)
    s.add_argument("--models", nargs="+", default=["fm", "deepfm", "sasrec", "seq_gru"])
    s = sub.add_parser("rating")
    s.add_argument("--models", nargs="+", default=["fm_explicit"])
    s.add_argument("--reference", default="deepfm_explicit")
    s.add_argument("--folds", default="1-5")
    s = sub.add_parser("ctr")
    s.add_argument("--dataset", default="ml-100k")
    s.add_argument("--models", nargs="+", default=["fm", "deepfm", "neumf"])
    s.add_argument("--positive-min", type=float, default=4.0)
    s.add_argument("--set", action="append", default=[], help="KEY=VALUE over every model's defaults (e.g. positive_min=4)")
    for sp in sub.choices.values():
        sp.add_argument("--out", default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    result = {"sweep": sweep, "loader": loader, "scale": scale, "lastout": lastout, "ctr": ctr,
              "rating": rating, "epochs1m": epochs1m}[args.cmd](args)
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
