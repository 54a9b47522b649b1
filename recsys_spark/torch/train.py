"""One training loop for every network, run as a plain function or under TorchDistributor.

``train(spec)`` reads the exported Parquet named in a :class:`TrainSpec`,
trains, early-stops on validation, checkpoints and returns a summary
(history, best epoch, path of the best weights).  It is the same function
locally and across Spark tasks: when ``torch.distributed`` environment
variables are present (``WORLD_SIZE`` > 1, as torchrun / TorchDistributor set
them) it joins a gloo process group (NCCL when ``spec.device`` is CUDA),
wraps the network in ``DistributedDataParallel`` and reads only its shard;
rank 0 alone writes checkpoints and logs to MLflow.

The loop owns epochs, progress (a tqdm bar on a terminal, one log line per
epoch always), early stopping (``patience`` epochs without improvement of
the validation metric), checkpoints (``best.pt`` holds the best state dict,
``last.pt`` the state to resume from; both loaded with ``weights_only=True``)
and seeds.  A family only says how one batch turns into a loss
(:class:`PairTask`, :class:`RowTask`).

Families:

* pair models (gmf, mlp, neumf, deepfm) stream ``(user_idx, item_idx, rating)``
  rows (deepfm: and ``timestamp``) through the loader backend; implicit:
  ``n_neg`` negatives per positive drawn per batch (seeded by seed, epoch,
  rank; never an item the user rated), log loss, positives optionally only
  the ratings >= ``positive_min``; explicit: squared error on the rating.
* row models (autorec: item rows over users; cdae: user rows over items)
  read the interactions once into a sparse matrix and take mini-batches of
  rows (ranks take disjoint, equally long slices of a seeded permutation).

Validation metric: RMSE (explicit, autorec; lower is better) or sampled
NDCG@10 (implicit: each validation pair ranked against ``valid_negatives``
fixed random items the user did not rate; higher is better).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from recsys_spark.torch import data as tdata
from recsys_spark.torch.models import NeuMF, build_net, net_kwargs

log = logging.getLogger(__name__)

PAIR_KINDS = ("gmf", "mlp", "neumf", "deepfm")
TIMED_KINDS = ("deepfm",)  # networks that read the event's timestamp (a third score argument)
ROW_KINDS = ("autorec", "cdae")
PAIR_COLUMNS = {"user_idx": torch.int64, "item_idx": torch.int64, "rating": torch.float32}


@dataclasses.dataclass
class TrainSpec:
    """Everything a training run needs; JSON-able, so it travels to Spark tasks and MLflow."""

    kind: str  # gmf | mlp | neumf | autorec | cdae
    data: str  # exported training interactions (user_idx, item_idx, rating)
    n_users: int
    n_items: int
    out_dir: str  # checkpoints and the final weights
    valid: str | None = None  # validation interactions (early stopping); None: fixed epochs
    explicit: bool = False  # rating regression (squared loss) instead of implicit log loss
    net: dict[str, Any] = dataclasses.field(default_factory=dict)  # architecture (models.build_net)
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0  # Adam L2 (pair models, cdae)
    l2: float = 0.0  # AutoRec's lambda/2 * ||W||^2 (per epoch, over the whole matrix)
    n_neg: int = 4  # implicit pair models: negatives per positive
    valid_negatives: int = 99
    patience: int = 3
    seed: int = 42
    backend: str = "arrow"  # loader backend (data.BACKENDS)
    loader_workers: int = 0
    shuffle_buffer: int = 65536
    mu: float = 0.0  # global mean (explicit models predict mu + net)
    pretrained: dict[str, str] | None = None  # neumf: {"gmf": path, "mlp": path} state dicts
    side: str | None = None  # deepfm: an .npz of the side tables (fmrec.side_arrays), copied into the network's buffers
    positive_min: float | None = None  # implicit pair models: only ratings >= this are positives (None: every rating)
    optimizer: str = "adam"  # adam | lbfgs (full batch, row models: the AutoRec paper's choice)
    lbfgs_iters: int = 20  # L-BFGS iterations per epoch
    resume: bool = False
    device: str = "cpu"
    mlflow: dict[str, str] | None = None  # {"uri", "experiment", "run_name"}

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


# -- distributed plumbing ---------------------------------------------------------
def _init_distributed(device: str) -> tuple[int, int, bool]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, False
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return torch.distributed.get_rank(), torch.distributed.get_world_size(), True


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def load_state(path: str) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


# -- families ------------------------------------------------------------------------
def _pos_keys(users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    return np.unique(users.astype(np.int64) * n_items + items.astype(np.int64))


def _sample_negatives(users: np.ndarray, n_items: int, keys: np.ndarray, rng: np.random.Generator, tries: int = 10) -> np.ndarray:
    """One item per entry of ``users`` that the user never rated (keys: sorted ``u * n_items + i``).

    Uniform rejection sampling; entries still colliding after ``tries`` rounds
    (users who rated most of the catalogue) draw from the user's unrated items
    exactly.  A user who rated every item keeps a random (positive) item: there
    is no negative to give.
    """
    items = rng.integers(0, n_items, size=len(users))

    def hits() -> np.ndarray:
        k = users * n_items + items
        pos = np.minimum(np.searchsorted(keys, k), len(keys) - 1)
        return keys[pos] == k if len(keys) else np.zeros(len(k), dtype=bool)

    hit = hits()
    for _ in range(tries):
        if not hit.any():
            return items
        items[hit] = rng.integers(0, n_items, size=int(hit.sum()))
        hit = hits()
    for u in np.unique(users[hit]):
        lo, hi = np.searchsorted(keys, [u * n_items, (u + 1) * n_items])
        free = np.setdiff1d(np.arange(n_items), keys[lo:hi] - u * n_items)
        rows = np.flatnonzero(hit & (users == u))
        if len(free):
            items[rows] = rng.choice(free, size=len(rows))
    return items


class _Validator:
    """Validation metric: RMSE over the pairs, or sampled NDCG@10 against fixed negatives."""

    def __init__(self, spec: TrainSpec, known_keys: np.ndarray) -> None:
        timed = spec.kind in TIMED_KINDS
        v = tdata.read_columns(spec.valid, ["user_idx", "item_idx", "rating", *(["timestamp"] if timed else [])])
        self.explicit = spec.explicit or spec.kind == "autorec"
        ok = (v["user_idx"] < spec.n_users) & (v["item_idx"] < spec.n_items)
        if not self.explicit and spec.positive_min is not None:
            ok &= v["rating"] >= spec.positive_min  # the positives the model is trained to rank
        self.u = torch.from_numpy(v["user_idx"][ok].astype(np.int64))
        self.i = torch.from_numpy(v["item_idx"][ok].astype(np.int64))
        self.r = torch.from_numpy(v["rating"][ok].astype(np.float32))
        self.t = torch.from_numpy(v["timestamp"][ok].astype(np.int64)) if timed else None
        self.name = "rmse" if self.explicit else "ndcg10"
        if not self.explicit:
            keys = np.union1d(known_keys, _pos_keys(self.u.numpy(), self.i.numpy(), spec.n_items))
            rng = np.random.default_rng([spec.seed, 99])
            rep = np.repeat(self.u.numpy().astype(np.int64), spec.valid_negatives)
            self.neg = torch.from_numpy(_sample_negatives(rep, spec.n_items, keys, rng).reshape(len(self.u), spec.valid_negatives))

    def better(self, a: float, b: float | None) -> bool:
        return b is None or (a < b if self.explicit else a > b)

    @torch.no_grad()
    def __call__(self, score) -> float:
        if len(self.u) == 0:
            return float("nan")
        if self.explicit:
            t = self.t.split(65536) if self.t is not None else [None] * len(self.u.split(65536))
            pred = torch.cat([score(u, i, tt) for u, i, tt in zip(self.u.split(65536), self.i.split(65536), t, strict=True)])
            return float(torch.sqrt(torch.mean((pred - self.r) ** 2)))
        gains = []
        t = self.t.split(4096) if self.t is not None else [None] * len(self.u.split(4096))
        for u, i, n, tt in zip(self.u.split(4096), self.i.split(4096), self.neg.split(4096), t, strict=True):
            pos = score(u, i, tt)
            nt = None if tt is None else tt[:, None].expand_as(n).reshape(-1)
            neg = score(u[:, None].expand_as(n).reshape(-1), n.reshape(-1), nt).reshape(n.shape)
            rank = (neg > pos[:, None]).sum(1)  # 0 = first
            gains.append(torch.where(rank < 10, 1.0 / torch.log2(rank.float() + 2.0), torch.zeros_like(pos)))
        return float(torch.cat(gains).mean())


class PairTask:
    """gmf / mlp / neumf: batches of (user, item[, rating]) from the loader backend."""

    def __init__(self, spec: TrainSpec, rank: int, world: int) -> None:
        self.spec = spec
        self.rank = rank
        cols = tdata.read_columns(spec.data, ["user_idx", "item_idx"])
        self.keys = _pos_keys(cols["user_idx"], cols["item_idx"], spec.n_items)  # every rated pair: never a negative
        self.timed = spec.kind in TIMED_KINDS
        columns = {**PAIR_COLUMNS, "timestamp": torch.int64} if self.timed else PAIR_COLUMNS
        self.loader = tdata.load(
            spec.backend, spec.data, columns, spec.batch_size, shuffle=True, shuffle_buffer=spec.shuffle_buffer,
            seed=spec.seed, rank=rank, world_size=world,
        )  # fmt: skip
        self.epoch = 0

    def batches(self, epoch: int):
        self.epoch = epoch
        self.loader.set_epoch(epoch)
        self.rng = np.random.default_rng([self.spec.seed, epoch, self.rank, 7])
        dl = torch.utils.data.DataLoader(self.loader, batch_size=None, num_workers=self.spec.loader_workers)
        yield from dl

    def loss(self, net: nn.Module, batch: dict[str, torch.Tensor], device: str) -> tuple[torch.Tensor, int]:
        u, i, r = batch["user_idx"], batch["item_idx"], batch["rating"]
        t = batch["timestamp"] if self.timed else None
        extra = (lambda x: (x.to(device),)) if self.timed else (lambda x: ())
        if self.spec.explicit:
            pred = net(u.to(device), i.to(device), *extra(t))
            return nn.functional.mse_loss(pred, r.to(device)), len(u)
        if self.spec.positive_min is not None:  # only these ratings are positives (the others are neither)
            keep = r >= self.spec.positive_min
            u, i, t = u[keep], i[keep], (t[keep] if self.timed else None)
        un = np.repeat(u.numpy(), self.spec.n_neg)
        neg = torch.from_numpy(_sample_negatives(un, self.spec.n_items, self.keys, self.rng))
        users = torch.cat([u, torch.from_numpy(un)]).to(device)
        items = torch.cat([i, neg]).to(device)
        labels = torch.cat([torch.ones(len(u)), torch.zeros(len(un))]).to(device)
        times = extra(torch.cat([t, t.repeat_interleave(self.spec.n_neg)])) if self.timed else ()  # a negative shares its positive's moment
        if len(u) == 0:
            return (net(users[:0], items[:0], *times).sum() * 0.0), 0
        return nn.functional.binary_cross_entropy_with_logits(net(users, items, *times), labels), len(u)


class RowTask:
    """autorec (item rows over users) / cdae (user rows over items), from a sparse matrix in memory."""

    def __init__(self, spec: TrainSpec, rank: int, world: int) -> None:
        self.spec, self.rank, self.world = spec, rank, world
        c = tdata.read_columns(spec.data, ["user_idx", "item_idx", "rating"])
        u, i, r = c["user_idx"].astype(np.int64), c["item_idx"].astype(np.int64), c["rating"].astype(np.float32)
        self.keys = _pos_keys(u, i, spec.n_items)
        if spec.kind == "autorec":
            self.m = sp.csr_matrix((r, (i, u)), shape=(spec.n_items, spec.n_users))
        else:
            self.m = sp.csr_matrix((np.ones_like(r), (u, i)), shape=(spec.n_users, spec.n_items))
        self.m.sum_duplicates()
        self.rows = np.flatnonzero(np.diff(self.m.indptr) > 0)

    def dense(self, rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.m[rows].toarray())

    def batches(self, epoch: int, full: bool = False):
        order = self.rows[np.random.default_rng([self.spec.seed, epoch]).permutation(len(self.rows))]
        per_rank = math.ceil(len(order) / self.world)
        mine = np.resize(order[self.rank :: self.world], per_rank) if len(order) else order  # equal lengths across ranks
        size = len(mine) if full else self.spec.batch_size
        for s in range(0, len(mine), max(1, size)):
            yield torch.from_numpy(mine[s : s + size])

    def loss(self, net: nn.Module, rows: torch.Tensor, device: str) -> tuple[torch.Tensor, int]:
        x = self.dense(rows.numpy()).to(device)
        if self.spec.kind == "autorec":
            mask = (x != 0).float()
            recon = net(x)
            sse = (((recon - x) * mask) ** 2).sum()
            base = net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net
            weights = base.encoder.weight.pow(2).sum() + base.decoder.weight.pow(2).sum()
            reg = self.spec.l2 * (len(rows) / max(1, len(self.rows))) * weights
            return (sse + reg) / max(1.0, float(mask.sum())), len(rows)
        logits = net(rows.to(device), x)
        return nn.functional.binary_cross_entropy_with_logits(logits, x), len(rows)

    @torch.no_grad()
    def freeze(self, net: nn.Module, device: str) -> None:
        net.eval()
        for s in range(0, len(self.rows), 1024):
            rows = self.rows[s : s + 1024]
            idx, x = torch.from_numpy(rows).to(device), self.dense(rows).to(device)
            if self.spec.kind == "autorec":
                net.freeze_codes(x, idx)
            else:
                net.freeze_codes(idx, x)


# -- the loop ---------------------------------------------------------------------------
def _progress(it, total: int | None, desc: str, rank: int):
    if rank == 0 and sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(it, total=total, desc=desc, leave=False)
    return it


def _mlflow_start(spec: TrainSpec):
    import mlflow

    mlflow.set_tracking_uri(spec.mlflow["uri"])
    exp = mlflow.set_experiment(spec.mlflow.get("experiment", "recsys-spark"))
    run = mlflow.start_run(experiment_id=exp.experiment_id, run_name=spec.mlflow.get("run_name", spec.kind))
    flat = {k: v for k, v in dataclasses.asdict(spec).items() if k not in ("net", "mlflow", "pretrained")}
    mlflow.log_params({**{k: str(v)[:500] for k, v in flat.items()}, **{f"net.{k}": str(v) for k, v in spec.net.items()}})
    return mlflow, run


def train(spec: TrainSpec | dict[str, Any]) -> dict[str, Any]:
    """Train ``spec.kind``; returns ``{"history", "best_epoch", "best", "metric", "state", ...}`` (rank 0's view)."""
    if isinstance(spec, dict):
        spec = TrainSpec(**spec)
    rank, world, distributed = _init_distributed(spec.device)
    seed_everything(spec.seed)
    device = spec.device
    if device == "cuda":  # one GPU per rank (torchrun / TorchDistributor set LOCAL_RANK)
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    out = Path(spec.out_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    net_params = net_kwargs(spec.kind, spec.net, spec.explicit, spec.mu)
    net = build_net(spec.kind, spec.n_users, spec.n_items, **net_params)
    if spec.pretrained and isinstance(net, NeuMF):
        gmf = build_net("gmf", spec.n_users, spec.n_items, dim=net.gmf.user.embedding_dim)
        mlp = build_net(
            "mlp", spec.n_users, spec.n_items, dim=net.mlp.user.embedding_dim, layers=tuple(net_params.get("layers", (64, 32, 16)))
        )
        gmf.load_state_dict(load_state(spec.pretrained["gmf"]), strict=False)
        mlp.load_state_dict(load_state(spec.pretrained["mlp"]), strict=False)
        net.load_pretrained(gmf, mlp)
    if spec.side:  # deepfm: the side tables become buffers (saved with the weights)
        with np.load(spec.side) as z:
            net.load_side({k: z[k] for k in z.files})
    net.to(device)
    task = PairTask(spec, rank, world) if spec.kind in PAIR_KINDS else RowTask(spec, rank, world)
    validator = _Validator(spec, task.keys) if spec.valid else None
    # NeuMF from pre-trained towers: plain SGD, as in the paper (Adam's moments restart badly)
    if spec.optimizer == "lbfgs":
        if not isinstance(task, RowTask):
            raise ValueError("optimizer 'lbfgs' is full-batch: only for the row models (autorec, cdae)")
        opt = torch.optim.LBFGS(net.parameters(), lr=1.0, max_iter=spec.lbfgs_iters, history_size=20, line_search_fn="strong_wolfe")
    elif spec.pretrained:
        opt = torch.optim.SGD(net.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    elif spec.optimizer != "adam":
        raise ValueError(f"optimizer must be adam or lbfgs, got {spec.optimizer!r}")
    else:
        opt = torch.optim.Adam(net.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    history: list[dict[str, Any]] = []
    best, best_epoch, start_epoch, bad = None, -1, 0, 0
    last = out / "last.pt"
    if spec.resume and last.exists():
        ck = torch.load(last, map_location="cpu", weights_only=True)
        net.load_state_dict(ck["net"])
        opt.load_state_dict(ck["opt"])
        start_epoch = int(ck["epoch"]) + 1
        best = float(ck["best"]) if ck["best"] == ck["best"] else None
        best_epoch = int(ck["best_epoch"])
        log.info("%s: resumed from %s at epoch %d", spec.kind, last, start_epoch)
    model = nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.startswith("cuda") else None) if distributed else net
    mlf = _mlflow_start(spec) if (spec.mlflow and rank == 0) else None
    try:
        for epoch in range(start_epoch, spec.epochs):
            t0 = time.perf_counter()
            model.train()
            total, n = 0.0, 0
            # uneven shards (pair models read whole row groups) must not hang the all-reduce
            ctx = model.join() if distributed else _nullcontext()
            with ctx:
                batches = task.batches(epoch, full=True) if spec.optimizer == "lbfgs" else task.batches(epoch)
                for batch in _progress(batches, None, f"{spec.kind} epoch {epoch}", rank):
                    if spec.optimizer == "lbfgs":

                        def closure(batch=batch):
                            opt.zero_grad(set_to_none=True)
                            out, _ = task.loss(model, batch, device)
                            out.backward()
                            return out

                        opt.step(closure)
                        with torch.no_grad():
                            loss, m = task.loss(model, batch, device)
                    else:
                        loss, m = task.loss(model, batch, device)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                    total += float(loss.detach()) * m
                    n += m
            train_loss = total / max(1, n)
            if isinstance(task, RowTask):
                task.freeze(net, device)
            net.eval()
            metric = validator(_scorer(net, device)) if validator else float("nan")
            secs = time.perf_counter() - t0
            row = {"epoch": epoch, "train_loss": train_loss, "samples": n, "seconds": round(secs, 3)}
            if validator:
                row[f"valid_{validator.name}"] = metric
            history.append(row)
            log.info("%s epoch %d: loss %.5f%s (%d samples, %.1fs, rank %d/%d)", spec.kind, epoch, train_loss,
                     f", valid {validator.name} {metric:.5f}" if validator else "", n, secs, rank, world)  # fmt: skip
            if mlf is not None:
                mlf[0].log_metrics({k: float(v) for k, v in row.items() if k != "epoch"}, step=epoch)
            improved = validator is None or (metric == metric and validator.better(metric, best))
            if improved:
                best, best_epoch, bad = (metric if validator else None), epoch, 0
                if rank == 0:
                    torch.save(_cpu_state(net), out / "best.pt")
            else:
                bad += 1
            if rank == 0:
                torch.save(
                    {
                        "net": _cpu_state(net),
                        "opt": opt.state_dict(),
                        "epoch": epoch,
                        "best": best if best is not None else float("nan"),
                        "best_epoch": best_epoch,
                    },
                    last,
                )
            if validator and bad >= spec.patience:
                log.info("%s: early stop at epoch %d (best %s %.5f at epoch %d)", spec.kind, epoch, validator.name, best, best_epoch)
                break
        if rank == 0 and not (out / "best.pt").exists():  # no epoch ran (resumed past the end)
            torch.save(_cpu_state(net), out / "best.pt")
        result = {
            "kind": spec.kind, "history": history, "best_epoch": best_epoch, "best": best,
            "metric": validator.name if validator else None, "state": str(out / "best.pt"), "world_size": world,
        }  # fmt: skip
        if rank == 0:
            (out / "result.json").write_text(json.dumps(result, indent=2))
            if mlf is not None:
                if best is not None:
                    mlf[0].log_metric(f"best_valid_{validator.name}", float(best))
                mlf[0].log_artifact(str(out / "best.pt"), artifact_path="model")
                mlf[0].log_text(spec.to_json(), "model/spec.json")
        return result
    finally:
        if mlf is not None:
            mlf[0].end_run()
        if distributed:
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def _scorer(net: nn.Module, device: str):
    """``(users, items, ts) -> scores`` on the CPU; ``ts`` reaches only the networks that read it."""

    def score(u: torch.Tensor, i: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        args = (u.to(device), i.to(device), *(() if t is None else (t.to(device),)))
        return net.score(*args).cpu()

    return score


def _cpu_state(net: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict on the CPU: checkpoints load anywhere (and scoring in Spark runs on CPU)."""
    return {k: v.detach().cpu() for k, v in net.state_dict().items()}


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def run(spec: TrainSpec, distributor: str = "local", num_processes: int = 2, use_gpu: bool = False) -> dict[str, Any]:
    """Train locally (``"local"``: this process) or through TorchDistributor.

    ``"spark"``: ``num_processes`` Spark tasks (barrier mode) of the active
    session; ``"torchrun"``: ``num_processes`` processes on the driver
    (TorchDistributor's local mode).  The function and the spec are the same.
    """
    if distributor == "local":
        return train(spec)
    if distributor not in ("spark", "torchrun"):
        raise ValueError(f"distributor must be 'local', 'spark' or 'torchrun', got {distributor!r}")
    from pyspark.ml.torch.distributor import TorchDistributor

    td = TorchDistributor(num_processes=num_processes, local_mode=distributor == "torchrun", use_gpu=use_gpu)
    return td.run(train, dataclasses.asdict(spec))
