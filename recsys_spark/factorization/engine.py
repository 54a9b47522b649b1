"""Partition-parallel training of our own factorization models on Spark RDDs.

Ratings are hash-partitioned by user into ``num_partitions`` shards (one
numpy shard per partition, built with ``mapInArrow`` and cached, stored
packed: :func:`~recsys_spark.factorization.kernels.pack`).  A user's
parameters live in the partition that owns the user and never leave it
during training; item parameters (``bi``, ``Q`` and, for SVD++, ``Y`` and
``Bbin``) are broadcast at the start of each epoch.  Each epoch is one Spark
job: every partition runs a vectorized numpy kernel
(:mod:`recsys_spark.factorization.kernels`) over its ratings and returns,
per item it touched, what the driver needs to update the item side:

* ``sgd`` / ``svdpp``: per-partition SGD; item deltas are averaged across
  partitions weighted by each partition's rating count of the item
  (parameter averaging; with one partition it is plain SGD); the step sizes
  shrink by ``lr_decay`` per epoch (default 1.0: constant);
* ``gd``: full-batch gradient sums (exact whatever the partitioning),
  each parameter's gradient divided by its rating count, with optional
  momentum (a fixed step too large for the data diverges: training stops
  with an error naming the epoch, never with NaN factors); with
  ``bold_driver`` a point whose objective is not below the best one's is
  rejected (back to the best point, momentum dropped, step halved) and an
  accepted one grows the step (``lr_grow``, 5%); the best point is returned;
* ``nmf_mu``: numerator/denominator sums of the multiplicative updates (exact).

The driver holds the item arrays (``n_items x rank``: catalogue-sized, never
rating-sized).  Lineage is cut every epoch (``recsys_spark.lineage``: a local or a reliable checkpoint), and the
previous epoch's cached state (and its item broadcast, destroyed) is
released once the next one exists.  With a
seed the result is deterministic for a given ``num_partitions``; initial
factors do not depend on the partitioning.
"""

from __future__ import annotations

import logging
import pickle
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import lineage
from recsys_spark.factorization import kernels as K
from recsys_spark.factorization.model import (
    ALPHA,
    ITEM_FACTORS_DDL,
    T_MEAN,
    USER_FACTORS_DDL,
)
from recsys_spark.schemas import COL_ITEM, COL_RATING, COL_TIMESTAMP, COL_USER
from recsys_spark.spark import spark_context

log = logging.getLogger(__name__)

METHODS = ("sgd", "svdpp", "gd", "nmf_mu")


@dataclass
class TrainResult:
    user_factors: DataFrame
    item_factors: DataFrame
    item_bins: DataFrame | None
    mu: float
    time: dict[str, Any] | None
    history: list[dict[str, float]] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)  # wall time of each training epoch (the first builds the shards)


def _shards(df: DataFrame, num_partitions: int, n_items: int, with_time: bool, implicit: bool) -> Any:
    """RDD with one shard dict per partition (users hash-partitioned; same hash for train and valid)."""
    cols = [COL_USER, COL_ITEM, COL_RATING] + ([COL_TIMESTAMP] if with_time else [])

    def to_blob(batches):
        batches = list(batches)
        tab = pa.Table.from_batches(batches) if batches else None

        def get(c, dt):
            if tab is None or tab.num_rows == 0:
                return np.zeros(0, dt)
            return np.asarray(tab.column(c).to_numpy(zero_copy_only=False), dtype=dt)

        users, items, ratings = get(COL_USER, np.int64), get(COL_ITEM, np.int64), get(COL_RATING, np.float64)
        times = get(COL_TIMESTAMP, np.float64) if with_time else None
        rated = ~np.isnan(ratings)  # NULL rating: an implicit-only (user, item) pair
        sh = K.build_shard(users[rated], items[rated], ratings[rated], None if times is None else times[rated])
        if implicit:
            extra = None
            if (~rated).any():
                pos = np.searchsorted(sh["users"], users[~rated])
                ok = (pos < len(sh["users"])) & (sh["users"][np.minimum(pos, len(sh["users"]) - 1)] == users[~rated])
                extra = (pos[ok], items[~rated][ok])
            sh["N"] = K.implicit_matrix(sh, n_items, extra)
        yield pa.RecordBatch.from_pydict({"blob": [pickle.dumps(K.pack(sh), protocol=5)]})

    blobs = df.select(*cols).repartition(num_partitions, COL_USER).mapInArrow(to_blob, "blob binary")
    return blobs.rdd.map(lambda row: pickle.loads(row.blob))


def train(
    spark: SparkSession, train_df: DataFrame, *, method: str, rank: int, n_epochs: int, hp: dict[str, Any],
    seed: int = 42, num_partitions: int | None = None, valid_df: DataFrame | None = None, history: bool = False,
    time_bins: int = 0, implicit_extra: DataFrame | None = None, name: str = "factorization",
) -> TrainResult:  # fmt: skip
    """Train with ``method`` (see module docstring) and return the factor tables."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    dtype = np.dtype(hp.get("dtype", "float64"))  # sgd: the precision of the kernel's parameters
    if dtype not in (np.float32, np.float64) or (dtype != np.float64 and method != "sgd"):
        raise ValueError(f"{name}: dtype must be float64, or float32 with the sgd optimizer; got {dtype} with {method}")
    sc = spark_context(spark, f"{name} (our factorization engine's RDDs)")
    P = num_partitions or sc.defaultParallelism
    biased = hp.get("biased", True) and method != "nmf_mu"
    stats = train_df.agg(
        F.avg(COL_RATING).alias("mu"), F.max(COL_USER).alias("mu_"), F.max(COL_ITEM).alias("mi"),
        F.min(COL_TIMESTAMP).alias("t0"), F.max(COL_TIMESTAMP).alias("t1"), F.count("*").alias("n"),
    ).first()  # fmt: skip
    if stats["n"] == 0:
        raise ValueError(f"{name}: cannot fit on empty training data")
    mu = float(stats["mu"]) if biased else 0.0
    n_users, n_items = int(stats["mu_"]) + 1, int(stats["mi"]) + 1
    if implicit_extra is not None:
        n_items = max(n_items, int(implicit_extra.agg(F.max(COL_ITEM)).first()[0] or 0) + 1)
    tp = None
    if time_bins:
        if stats["t0"] is None:
            raise ValueError(f"{name}: time-aware biases need a timestamp column with values")
        t0, t1 = stats["t0"] / 86400.0, stats["t1"] / 86400.0
        tp = {
            "t0": t0,
            "bin_width": max((t1 - t0) / time_bins, 1e-9) * (1 + 1e-9),
            "n_bins": int(time_bins),
            "beta": float(hp.get("beta", 0.4)),
        }
    implicit = method == "svdpp"
    data = train_df.select(COL_USER, COL_ITEM, F.col(COL_RATING).cast("double"), F.col(COL_TIMESTAMP).cast("long"))
    if implicit_extra is not None:
        data = data.unionByName(
            implicit_extra.select(
                COL_USER, COL_ITEM, F.lit(None).cast("double").alias(COL_RATING), F.lit(None).cast("long").alias(COL_TIMESTAMP)
            )
        )
    shards = _shards(data, P, n_items, tp is not None, implicit).persist(StorageLevel.MEMORY_AND_DISK)
    if valid_df is not None:
        vdata = valid_df.select(COL_USER, COL_ITEM, F.col(COL_RATING).cast("double"), F.col(COL_TIMESTAMP).cast("long"))
        vshards = _shards(vdata, P, n_items, tp is not None, False).persist(StorageLevel.MEMORY_AND_DISK)
    else:
        vshards = shards.map(lambda _: None)

    rng = np.random.default_rng(seed)
    init_std = float(hp.get("init_std", 0.1))
    if method == "nmf_mu":
        lo, hi = hp.get("init_low", 0.0), hp.get("init_high", 1.0)
        I = {"Q": rng.uniform(lo, hi, (n_items, rank)), "bi": np.zeros(n_items)}
    else:
        I = {"Q": rng.normal(0.0, init_std, (n_items, rank)), "bi": np.zeros(n_items)}
    if implicit:
        I["Y"] = rng.normal(0.0, init_std, (n_items, rank))
    if tp is not None:
        I["Bbin"] = np.zeros((n_items, tp["n_bins"]))
    vel = {k: np.zeros_like(v) for k, v in I.items()} if method == "gd" else {}

    def init_users(sh):
        sh = K.unpack(sh)
        r = np.random.default_rng([seed, 1])  # the same draw in every partition: independent of the partitioning
        full = (
            r.uniform(hp.get("init_low", 0.0), hp.get("init_high", 1.0), (n_users, rank))
            if method == "nmf_mu"
            else r.normal(0.0, init_std, (n_users, rank))
        )
        U = {"P": full[sh["users"]].astype(dtype), "bu": np.zeros(len(sh["users"]), dtype)}
        if tp is not None:
            n = np.diff(sh["indptr"])
            U["alpha"] = np.zeros(len(sh["users"]))
            U["t_mean"] = np.bincount(sh["u"], sh["t"], len(n)) / np.maximum(n, 1)
        if method == "gd":
            U["vP"], U["vbu"] = np.zeros_like(U["P"]), np.zeros(len(sh["users"]))
        return U

    # the state travels as one element per partition: (shard, valid shard, user parameters)
    state = shards.zip(vshards).map(lambda x: (x[0], x[1], init_users(x[0])))
    n_item_total = None
    hist: list[dict[str, float]] = []
    epoch_seconds: list[float] = []
    src = [shards, vshards]  # the persisted RDDs the current state derives from
    held = list(src)  # every persisted RDD still needed: src and, bold driver, the kept point's sources
    bcs: dict[int, Any] = {}  # the item broadcast each epoch's output was computed with
    bold = method == "gd" and bool(hp.get("bold_driver", False))
    lr, reset = float(hp.get("lr", 0.0)), False  # reset: the epoch re-starts from the kept point (a retry)
    kept = None  # bold driver: (objective, state, item arrays, its persisted sources) of the best point so far
    for epoch in range(n_epochs + (1 if history or bold else 0)):
        last_eval = epoch == n_epochs  # history / bold driver: one more pass that only evaluates
        t_start = time.perf_counter()
        bc = sc.broadcast(I)
        hp_e = {**hp, "lr": lr, "reset_velocity": reset}
        step = _make_step(method, hp_e, mu, n_items, tp, seed, epoch, history, last_eval, biased)
        state_in, src_in = state, src
        out = state.map(lambda x, step=step, bc=bc: (x[0], x[1], *step(x[0], x[1], x[2], bc.value)))
        out = out.persist(StorageLevel.MEMORY_AND_DISK)
        lineage.cut_rdd(out, spark)
        held.append(out)
        parts = out.map(lambda o: o[3]).collect()  # one record per partition, each bounded by the catalogue
        bcs[id(out)] = bc  # destroyed with ``out``: the next epoch's RDD still names this one as its parent
        state, src = out.map(lambda o: o[:3]), [out]
        counts = _counts(parts, n_items)
        if n_item_total is None:
            n_item_total = counts
        rec = _metrics(parts, I, n_item_total, hp, method)
        rec["epoch"] = epoch
        accepted = True
        if bold:  # a new point whose objective is not below the kept one's is rejected
            f = _objective(sum(r.get("seen_sse", 0.0) for r in parts), parts, I, n_item_total, hp["reg"])
            accepted = kept is None or reset or bool(np.isfinite(f) and f < kept[0])
            rec["lr"], rec["accepted"], rec["retry"] = lr, float(accepted), float(reset)
            if accepted and not reset:
                kept = (f, state_in, {k: v.copy() for k, v in I.items()}, src_in)
        if history:
            hist.append(rec)
        if not accepted:  # back to the kept point with a smaller step and no momentum
            lr *= float(hp.get("lr_shrink", 0.5))
            reset = True
            state, src, I = kept[1], kept[3], {k: v.copy() for k, v in kept[2].items()}
            vel = {k: np.zeros_like(v) for k, v in I.items()}
            if lr < float(hp["lr"]) * 1e-6:
                raise ValueError(f"{name}: no step lowers the objective (lr {lr:.3g} after epoch {epoch + 1})")
        else:
            if not all(np.isfinite(v).all() for v in I.values()) or not np.isfinite(rec.get("epoch_rmse", 0.0)):
                raise ValueError(f"{name}: diverged in epoch {epoch + 1} (non-finite parameters or error); lower lr")
            if not last_eval:
                _update_items(method, I, vel, parts, counts, hp_e, tp)
            lr *= float(hp.get("lr_grow", 1.05)) if bold and not reset else 1.0
            reset = False
        _release(held, keep=src + (kept[3] if kept else []), bcs=bcs)
        if not last_eval:
            epoch_seconds.append(round(time.perf_counter() - t_start, 4))
        log.info(
            "%s epoch %d/%d: %s (%.2fs, slowest task %.2fs)", name, min(epoch + 1, n_epochs), n_epochs,
            ", ".join(f"{k} {v:.4f}" for k, v in rec.items() if k != "epoch"), time.perf_counter() - t_start,
            max(p["task_s"] for p in parts),
        )  # fmt: skip

    if not all(np.isfinite(v).all() for v in I.values()):
        raise ValueError(f"{name}: diverged in the last epoch (non-finite parameters); lower lr")
    final_bc = sc.broadcast(I)

    def user_rows(pair):
        sh, U = pair
        Pm = U["P"]
        if implicit:
            Pm = Pm + np.asarray(sh["N"] @ final_bc.value["Y"])
        for j, uid in enumerate(sh["users"]):
            row = [int(uid), float(U["bu"][j]), Pm[j].tolist()]
            if tp is not None:
                row += [float(U["alpha"][j]), float(U["t_mean"][j])]
            yield row

    ddl = USER_FACTORS_DDL + (f", {ALPHA} double, {T_MEAN} double" if tp is not None else "")
    users_df = spark.createDataFrame(state.flatMap(lambda x: user_rows((x[0], x[2]))), ddl).transform(lineage.cut)
    final_bc.destroy()
    _release(held, bcs=bcs)
    rated = np.nonzero(n_item_total > 0)[0]
    items_df = spark.createDataFrame(
        [(int(j), float(I["bi"][j]), I["Q"][j].tolist()) for j in rated], ITEM_FACTORS_DDL
    )  # catalogue-sized, from the driver's arrays
    bins_df = None
    if tp is not None:
        B = I["Bbin"][rated]
        nz = np.nonzero(B)
        bins_df = spark.createDataFrame(
            [(int(rated[a]), int(b), float(B[a, b])) for a, b in zip(*nz, strict=True)], f"{COL_ITEM} int, bin int, b_ib double"
        )
    return TrainResult(users_df, items_df, bins_df, mu, tp, hist, epoch_seconds)


def _make_step(method, hp, mu, n_items, tp, seed, epoch, history, eval_only, biased):
    def step(sh, vsh, U, I_bc):
        t0 = time.perf_counter()
        U, rec = _step(sh, vsh, U, I_bc)
        rec["task_s"] = time.perf_counter() - t0
        return U, rec

    def _step(sh, vsh, U, I_bc):
        items, cnt = sh["items"], sh["item_counts"]
        sh = K.unpack(sh)
        rec: dict[str, Any] = {}
        N = sh.get("N")
        if history:  # exact train / valid error of the epoch-start parameters
            rec["train_sse"], rec["train_n"] = K.sse(sh, U, I_bc, mu, N, tp)
            if vsh is not None and len(vsh["r"]):
                rec["valid_sse"], rec["valid_n"] = _valid_sse(sh, K.unpack(vsh), U, I_bc, mu, N, tp)
        rec["user_reg"] = K.reg_terms(U, np.diff(sh["indptr"]).astype(np.float64)) if len(sh["users"]) else 0.0
        rec["rows"], rec["counts"] = items, cnt
        if eval_only or len(sh["r"]) == 0:  # the bold driver judges the end point by its full error
            judged = eval_only and hp.get("bold_driver") and len(sh["r"])
            rec["seen_sse"] = (rec["train_sse"] if "train_sse" in rec else K.sse(sh, U, I_bc, mu, N, tp)[0]) if judged else 0.0
            return U, rec
        rng = np.random.default_rng([seed, epoch, int(sh["users"][0])])
        if method in ("sgd", "svdpp"):
            dt = U["P"].dtype  # float32: the kernel works on a float32 copy, the driver keeps float64
            I_bc = I_bc if dt == np.float64 else {k: v.astype(dt) for k, v in I_bc.items()}
            I = {k: v.copy() for k, v in I_bc.items()}
            hp2 = {**hp, "biased": biased, **_decayed(hp, epoch)}
            if method == "sgd":
                rec["seen_sse"] = K.sgd_epoch(sh, U, I, mu, hp2, rng)
            else:
                rec["seen_sse"] = K.svdpp_epoch(sh, U, I, mu, hp2, rng, N, tp)
            rec["delta"] = {k: I[k][items] - I_bc[k][items] for k in ("Q", "bi")}  # in the kernel dtype
            if "Y" in I:
                ycols = np.unique(N.indices)
                rec["y_rows"], rec["y_counts"] = ycols, np.bincount(N.indices, minlength=n_items)[ycols]
                rec["delta"]["Y"] = I["Y"][ycols] - I_bc["Y"][ycols]
            if "Bbin" in I:
                tb, _ = K.time_features(sh["t"], sh["u"], U["t_mean"], tp)
                flat, fc = np.unique(sh["i"] * tp["n_bins"] + tb, return_counts=True)
                rec["bin_rows"], rec["bin_counts"] = flat, fc
                rec["delta"]["Bbin"] = I["Bbin"].reshape(-1)[flat] - I_bc["Bbin"].reshape(-1)[flat]
        elif method == "gd":
            du, di, rec["seen_sse"] = K.gd_gradients(sh, U, I_bc, mu, {**hp, "biased": biased}, n_items)
            n_u = np.maximum(np.diff(sh["indptr"]), 1).astype(np.float64)
            mom, lr = hp.get("momentum", 0.0), hp["lr"]
            if hp.get("reset_velocity"):  # bold driver: a rejected step's momentum is dropped
                U["vP"], U["vbu"] = np.zeros_like(U["vP"]), np.zeros_like(U["vbu"])
            U["vP"] = mom * U["vP"] + du["P"] / n_u[:, None]
            U["vbu"] = mom * U["vbu"] + du["bu"] / n_u
            U["P"] = U["P"] + lr * U["vP"]
            U["bu"] = U["bu"] + lr * U["vbu"]
            rec["sums"] = {"Q": di["Q"][items], "bi": di["bi"][items]}
        else:  # nmf_mu
            sums, rec["seen_sse"] = K.nmf_mu_sums(sh, U, I_bc, hp, n_items)
            rec["sums"] = {"num": sums["num"][items], "den": sums["den"][items]}
        return U, rec

    return step


def _release(held: list, keep: list | tuple = (), bcs: dict[int, Any] | None = None) -> None:
    """Unpersist every RDD in ``held`` but those in ``keep`` (which stay, in order), destroying its broadcast.

    ``Broadcast.unpersist`` keeps the driver's copy (one catalogue-sized block
    per epoch that was never freed: 360 MB of driver heap after 26 SVD++
    epochs on ml-latest-small); ``destroy`` frees it, but only once no live
    RDD names the epoch's output as a parent, i.e. when the output goes.
    """
    rest = [r for r in held if any(r is k for k in keep)]
    for r in held:
        if not any(r is k for k in keep):
            r.unpersist()
            bc = (bcs or {}).pop(id(r), None)
            if bc is not None:
                bc.destroy()
    held[:] = rest


def _objective(sse: float, parts, I, n_item, reg) -> float:
    """``sse`` plus the regularizer at the epoch-start parameters (users' terms from ``parts``, items' from ``I``)."""
    item_reg = float(np.sum(n_item * (I["bi"] ** 2 + np.sum(I["Q"] ** 2, axis=1))))
    return float(sse + reg * (sum(r["user_reg"] for r in parts) + item_reg))


def _decayed(hp: dict[str, Any], epoch: int) -> dict[str, float]:
    """The SGD step sizes of ``epoch``: each multiplied by ``lr_decay ** epoch`` (Koren's schedule; 1.0 keeps them)."""
    f = float(hp.get("lr_decay", 1.0)) ** epoch
    return {k: hp[k] * f for k in ("lr", "lr_bias", "lr_time") if k in hp}


def _valid_sse(sh, vsh, U, I, mu, N, tp):
    """Valid error for the users this shard owns (others are cold: the model's fallback answers them)."""
    pos = np.searchsorted(sh["users"], vsh["users"])
    ok_u = (
        (pos < len(sh["users"])) & (sh["users"][np.minimum(pos, max(len(sh["users"]) - 1, 0))] == vsh["users"])
        if len(sh["users"])
        else np.zeros(len(vsh["users"]), bool)
    )
    local = np.where(ok_u, pos, -1)[vsh["u"]]
    keep = local >= 0
    v = {
        "users": sh["users"],
        "u": local[keep],
        "i": vsh["i"][keep],
        "r": vsh["r"][keep],
        "t": None if vsh["t"] is None else vsh["t"][keep],
    }
    return K.sse(v, U, I, mu, N, tp, clip=None)


def _counts(parts, n_items):
    c = np.zeros(n_items)
    for rec in parts:
        c[rec["rows"]] += rec["counts"]
    return c


def _metrics(parts, I, n_item, hp, method) -> dict[str, float]:
    out: dict[str, float] = {}
    n = float(n_item.sum())
    seen = sum(rec.get("seen_sse", 0.0) for rec in parts)
    if seen:
        out["epoch_rmse"] = float(np.sqrt(seen / n))
    if "train_sse" in parts[0]:
        tr = sum(r.get("train_sse", 0.0) for r in parts)
        out["train_rmse"] = float(np.sqrt(tr / max(sum(r.get("train_n", 0) for r in parts), 1)))
        reg = hp.get("reg", 0.0)
        out["objective"] = _objective(tr, parts, I, n_item, reg)
        vn = sum(r.get("valid_n", 0) for r in parts)
        if vn:
            out["valid_rmse"] = float(np.sqrt(sum(r.get("valid_sse", 0.0) for r in parts) / vn))
    return out


def _update_items(method, I, vel, parts, counts, hp, tp):
    if method in ("sgd", "svdpp"):
        for name in ("Q", "bi", "Y", "Bbin"):
            if name not in I:
                continue
            rows_key, cnt_key = {"Y": ("y_rows", "y_counts"), "Bbin": ("bin_rows", "bin_counts")}.get(name, ("rows", "counts"))
            target = I[name].reshape(-1) if name == "Bbin" else I[name]
            acc = np.zeros_like(target)
            cnt = np.zeros(target.shape[0])
            for rec in parts:
                if "delta" not in rec:
                    continue
                rows, c, d = rec[rows_key], rec[cnt_key].astype(np.float64), rec["delta"][name]
                acc[rows] += d * (c[:, None] if d.ndim == 2 else c)
                cnt[rows] += c
            m = cnt > 0
            target[m] += acc[m] / (cnt[m][:, None] if acc.ndim == 2 else cnt[m])
    elif method == "gd":
        sq = np.zeros_like(I["Q"])
        sb = np.zeros_like(I["bi"])
        for rec in parts:
            if "sums" in rec:
                sq[rec["rows"]] += rec["sums"]["Q"]
                sb[rec["rows"]] += rec["sums"]["bi"]
        m = counts > 0
        reg, lr, mom = hp["reg"], hp["lr"], hp.get("momentum", 0.0)
        dq = np.zeros_like(sq)
        db = np.zeros_like(sb)
        dq[m] = sq[m] / counts[m][:, None] - reg * I["Q"][m]
        if hp.get("biased", True):
            db[m] = sb[m] / counts[m] - reg * I["bi"][m]
        vel["Q"] = mom * vel["Q"] + dq
        vel["bi"] = mom * vel["bi"] + db
        I["Q"] += lr * vel["Q"]
        I["bi"] += lr * vel["bi"]
    else:
        num = np.zeros_like(I["Q"])
        den = np.zeros_like(I["Q"])
        for rec in parts:
            if "sums" in rec:
                num[rec["rows"]] += rec["sums"]["num"]
                den[rec["rows"]] += rec["sums"]["den"]
        den += hp["reg_item"] * counts[:, None] * I["Q"]
        with np.errstate(divide="ignore", invalid="ignore"):
            I["Q"] = np.where(den > 0, I["Q"] * num / den, I["Q"])
