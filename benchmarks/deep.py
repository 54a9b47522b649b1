"""Deep models: selection on validation, loader throughput, training time, leave-last-out.

    RECSYS_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/deep.py sweep --model autorec --grid '{"l2": [10, 100]}'
    RECSYS_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/deep.py sweep --model neumf --grid '{"lr": [0.001]}'
    .venv/bin/python benchmarks/deep.py loader --rows 1000000
    .venv/bin/python benchmarks/deep.py scale --rows 1000000 5000000 --epochs 1
    RECSYS_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/deep.py lastout --dataset ml-latest-small --models gmf mlp neumf

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
    grid = json.loads(args.grid)
    keys = sorted(grid)
    rows = []
    for values in itertools.product(*[grid[k] for k in keys]):
        params = dict(zip(keys, values, strict=True))
        t = time.perf_counter()
        over = {**params, "refit": False} if rating else params
        model = registry.build(args.model, scale, over).fit(fit_on)
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
    for sp in sub.choices.values():
        sp.add_argument("--out", default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    result = {"sweep": sweep, "loader": loader, "scale": scale, "lastout": lastout}[args.cmd](args)
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
