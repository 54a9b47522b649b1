"""Deep models behind the project's estimator interface, scored back in Spark.

:class:`DeepRecommender.fit(train)` writes the training ratings (and a
seeded hash holdout for early stopping) as Parquet, trains through
:func:`recsys_spark.torch.train.run` (this process, or TorchDistributor),
optionally refits on all of ``train`` for the chosen number of epochs, and
returns a :class:`DeepModel`.

:class:`DeepModel` scores with ``pyspark.ml.functions.predict_batch_udf``:
each Python worker rebuilds the network once from the weights (shipped with
the UDF, so their size is the model's: embedding tables, AutoRec/CDAE codes)
and scores Arrow batches of ``(user_idx, item_idx)``.

* ``predict``: explicit models (``neumf_explicit``, ``autorec``) answer
  ratings (clipped); implicit ones (gmf, mlp, neumf, cdae) score
  preferences, not ratings, so their rating answer is the bias baseline
  (``source`` says so), like MLlib's implicit ALS here.  Users or items
  absent from training fall back to the bias baseline.
* ``recommend``: every known user x training item the user has not rated,
  scored by the UDF, best ``k`` kept (ties by ``item_idx``); users unknown to
  the network get the baseline's list.
* ``save``/``load``: the weights as a Parquet table ``(name, shape, values)``
  beside the baseline's tables.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from typing import Any, ClassVar

import numpy as np
import torch
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark.baselines import BiasBaseline, BiasTableModel
from recsys_spark.recommender import (
    Recommender,
    RecommenderModel,
    Scale,
    as_predictions,
    clip,
    rank_candidates,
)
from recsys_spark.schemas import (
    COL_ITEM,
    COL_PREDICTION,
    COL_RATING,
    COL_SCORE,
    COL_SOURCE,
    COL_TIMESTAMP,
    COL_USER,
)
from recsys_spark.spark import spark_context
from recsys_spark.torch.models import KINDS, build_net, net_kwargs
from recsys_spark.torch.train import TIMED_KINDS, TrainSpec, load_state, run

log = logging.getLogger(__name__)

WEIGHTS_SCHEMA = T.StructType(
    [
        T.StructField("name", T.StringType(), False),
        T.StructField("shape", T.ArrayType(T.IntegerType(), False), False),
        T.StructField("values", T.ArrayType(T.FloatType(), False), False),
    ]
)


def weights_frame(spark, weights: dict[str, np.ndarray]) -> DataFrame:
    """A network's state dict as a :data:`WEIGHTS_SCHEMA` table (one row per tensor)."""
    rows = [(k, [int(x) for x in np.shape(v)], np.asarray(v, dtype=np.float32).ravel().tolist()) for k, v in weights.items()]
    return spark.createDataFrame(rows, WEIGHTS_SCHEMA)


def weights_from_frame(df: DataFrame) -> dict[str, np.ndarray]:
    """The state dict back from :func:`weights_frame`'s table (collected: the model's size)."""
    return {r["name"]: np.asarray(r["values"], dtype=np.float32).reshape(r["shape"]) for r in df.collect()}


def make_scorer(kind: str, params: dict[str, Any], n_users: int, n_items: int, weights: Any, threads: int = 1):
    """``make_predict_fn`` for ``predict_batch_udf``: ``(users, items) -> scores`` (float64 numpy).

    ``weights``: the state dict as numpy arrays, or a Spark broadcast of it
    (shipped once per executor instead of with every task).
    """

    def make_predict_fn():
        torch.set_num_threads(threads)  # one per Spark task slot
        net = build_net(kind, n_users, n_items, **params)
        w = weights.value if hasattr(weights, "value") else weights
        net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in w.items()})
        net.eval()

        def score(*cols: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                s = net.score(*(torch.from_numpy(c.astype(np.int64)) for c in cols))
            return s.numpy().astype(np.float64)

        # predict_batch_udf counts the function's parameters: two inputs, or three with deepfm's timestamps
        if kind in TIMED_KINDS:

            def predict_timed(users: np.ndarray, items: np.ndarray, ts: np.ndarray) -> np.ndarray:
                return score(users, items, ts)

            return predict_timed

        def predict(users: np.ndarray, items: np.ndarray) -> np.ndarray:
            return score(users, items)

        return predict

    return make_predict_fn


class DeepModel(RecommenderModel):
    STATE_KEYS: ClassVar[tuple[str, ...]] = ("weights", "user_bias", "item_bias", "item_score", "seen")

    def __init__(
        self, name: str, kind: str, net: dict[str, Any], explicit: bool, n_users: int, n_items: int, mu: float,
        weights: dict[str, np.ndarray], base: BiasTableModel, info: dict[str, Any] | None = None, score_batch: int = 8192,
    ) -> None:  # fmt: skip
        self.name, self.kind, self.net, self.explicit = name, kind, dict(net), explicit
        self.n_users, self.n_items, self.mu = n_users, n_items, mu
        self.weights = weights
        self.base = base
        self.info = info or {}
        self.score_batch = score_batch
        self._broadcast = None  # the weights, broadcast on first scoring

    @property
    def scale(self) -> Scale:
        return self.base.scale

    @property
    def answers_ratings(self) -> bool:
        return self.explicit or self.kind == "autorec"

    def network(self) -> torch.nn.Module:
        """The trained network, in eval mode, on the driver (for analysis; scoring runs in Spark)."""
        net = build_net(self.kind, self.n_users, self.n_items, **net_kwargs(self.kind, self.net, self.explicit, self.mu))
        net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in self.weights.items()})
        return net.eval()

    def score_udf(self):
        from pyspark.ml.functions import predict_batch_udf

        params = net_kwargs(self.kind, self.net, self.explicit, self.mu)
        if self._broadcast is None:
            self._broadcast = spark_context(self.base.seen.sparkSession, f"{self.kind} scoring (broadcast weights)").broadcast(self.weights)
        return predict_batch_udf(
            make_scorer(self.kind, params, self.n_users, self.n_items, self._broadcast),
            return_type=T.DoubleType(),
            batch_size=self.score_batch,
        )  # fmt: skip

    @property
    def timed(self) -> bool:
        """Whether the network reads the event's timestamp (deepfm's context fields; -1: the user's latest)."""
        return self.kind in TIMED_KINDS

    def _ts_args(self, df: DataFrame | None) -> list:
        if not self.timed:
            return []
        if df is not None and COL_TIMESTAMP in df.columns:
            return [F.coalesce(F.col(COL_TIMESTAMP).cast("long"), F.lit(-1).cast("long"))]
        return [F.lit(-1).cast("long")]

    def _known(self, df: DataFrame) -> DataFrame:
        """``df`` with ``_ku``/``_ki``: the user/item had training ratings (the network learned them)."""
        ku = self.base.user_bias.select(COL_USER, F.lit(True).alias("_ku"))
        ki = self.base.item_bias.select(COL_ITEM, F.lit(True).alias("_ki"))
        return df.join(ku, COL_USER, "left").join(ki, COL_ITEM, "left").fillna(False, ["_ku", "_ki"])

    def predict(self, pairs: DataFrame) -> DataFrame:
        keep = [COL_USER, COL_ITEM] + ([COL_TIMESTAMP] if self.timed and COL_TIMESTAMP in pairs.columns else [])
        df = self.base.with_prediction(pairs.select(*keep), "_fb", "_fbs")
        if not self.answers_ratings:  # preference scores are not ratings
            return as_predictions(
                df.select(COL_USER, COL_ITEM, F.col("_fb").alias(COL_PREDICTION), F.col("_fbs").alias(COL_SOURCE)), self.name
            )
        df = self._known(df)
        known = F.col("_ku") & F.col("_ki")
        score = self.score_udf()(
            F.when(known, F.col(COL_USER)).otherwise(0), F.when(known, F.col(COL_ITEM)).otherwise(0), *self._ts_args(df)
        )
        out = df.select(
            COL_USER, COL_ITEM,
            F.when(known, clip(score, self.scale)).otherwise(F.col("_fb")).alias(COL_PREDICTION),
            F.when(known, F.lit(self.kind)).otherwise(F.col("_fbs")).alias(COL_SOURCE),
        )  # fmt: skip
        return as_predictions(out, self.name)

    def recommend(self, users: DataFrame, k: int = 10) -> DataFrame:
        want = users.select(COL_USER).distinct()
        known_users = self.base.user_bias.select(COL_USER)
        warm = want.join(known_users, COL_USER, "left_semi")
        cold = want.join(known_users, COL_USER, "left_anti")
        items = self.base.item_bias.select(COL_ITEM)
        cand = warm.crossJoin(items).join(self.base.seen.select(COL_USER, COL_ITEM), [COL_USER, COL_ITEM], "left_anti")
        scored = cand.withColumn(COL_SCORE, self.score_udf()(F.col(COL_USER), F.col(COL_ITEM), *self._ts_args(None)))
        top = rank_candidates(scored, k, self.name)
        return top.unionByName(self.base.recommend(cold, k).withColumn("model", F.lit(self.name)))

    # -- persistence -------------------------------------------------------
    def _state(self) -> dict[str, DataFrame]:
        return {"weights": weights_frame(self.base.seen.sparkSession, self.weights), **self.base._state()}

    def _params(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "net": self.net, "explicit": self.explicit, "n_users": self.n_users,
            "n_items": self.n_items, "mu": self.mu, "info": self.info, "score_batch": self.score_batch, "base": self.base._params(),
        }  # fmt: skip

    @classmethod
    def _from_state(cls, params: dict[str, Any], state: dict[str, DataFrame]) -> DeepModel:
        base = BiasTableModel._from_state(params["base"], state)
        weights = weights_from_frame(state["weights"])
        return cls(
            params["name"], params["kind"], params["net"], params["explicit"], params["n_users"], params["n_items"], params["mu"],
            weights, base, params["info"], params["score_batch"],
        )  # fmt: skip


def write_sorted(df: DataFrame, path: str, files: int = 4) -> None:
    """Ratings as Parquet in ``(user_idx, item_idx)`` order: the same input order however ``df`` was partitioned.

    The timestamp (where present) is written as a long, -1 where missing (deepfm reads it; no nulls in a tensor).
    """
    cols = [c for c in (COL_USER, COL_ITEM, COL_RATING, COL_TIMESTAMP) if c in df.columns]
    out = df.select(*cols).withColumn(COL_RATING, F.col(COL_RATING).cast("float"))
    out = out.withColumn(COL_TIMESTAMP, F.coalesce(F.col(COL_TIMESTAMP).cast("long"), F.lit(-1).cast("long")) if COL_TIMESTAMP in cols
                         else F.lit(-1).cast("long"))  # fmt: skip
    out.repartitionByRange(files, COL_USER, COL_ITEM).sortWithinPartitions(COL_USER, COL_ITEM).write.mode("overwrite").parquet(path)


@dataclasses.dataclass
class DeepRecommender(Recommender):
    """A network from :mod:`recsys_spark.torch.models` trained on the ratings of ``fit``.

    ``valid_fraction`` of the ratings (a seeded hash of the pair) is held out
    for early stopping; with ``refit`` the network is then retrained on all of
    them for the best epoch count.  ``distributor``: ``local`` (this process),
    ``spark`` (TorchDistributor over ``num_processes`` Spark tasks) or
    ``torchrun`` (TorchDistributor's local mode).
    """

    name: str = "neumf"
    kind: str = "neumf"  # one of models.KINDS
    scale: Scale = dataclasses.field(default_factory=Scale)
    explicit: bool = False
    net: dict[str, Any] = dataclasses.field(default_factory=dict)
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    l2: float = 0.0
    n_neg: int = 4
    patience: int = 3
    seed: int = 42
    valid_fraction: float = 0.1
    refit: bool = True
    optimizer: str = "adam"  # adam | lbfgs (full batch; autorec, cdae)
    lbfgs_iters: int = 20
    pretrain: bool = False  # neumf: start from trained GMF and MLP towers
    pretrain_lr: float = 1e-3
    backend: str = "arrow"
    distributor: str = "local"
    num_processes: int = 2
    use_gpu: bool = False  # train on CUDA (one GPU per rank); scoring in Spark stays on CPU
    loader_workers: int = 0
    score_batch: int = 8192
    work_dir: str | None = None  # where the exported data and checkpoints go (a temporary directory by default)
    mlflow: dict[str, str] | None = None
    positive_min: float | None = None  # implicit: only ratings >= this are positives (deepfm's ranking head: 4)
    # deepfm: side features (fmside.side_arrays)
    tag_vocab: int = 256
    tags_per_item: int = 5
    context: bool = True  # weekday / hour / tenure fields where the ratings have timestamps
    side_file: str | None = None  # set by fit: the .npz of the side tables the training run loads

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must be in [0, 1), got {self.valid_fraction}")

    def _spec(self, data: str, valid: str | None, out: str, n_users: int, n_items: int, mu: float, **kw) -> TrainSpec:
        return TrainSpec(
            kind=self.kind, data=data, valid=valid, n_users=n_users, n_items=n_items, out_dir=out, explicit=self.explicit,
            net=self.net, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay, l2=self.l2,
            n_neg=self.n_neg, patience=self.patience, seed=self.seed, backend=self.backend, loader_workers=self.loader_workers,
            mu=mu, mlflow=self.mlflow, optimizer=self.optimizer, lbfgs_iters=self.lbfgs_iters,
            device="cuda" if self.use_gpu else "cpu", side=self.side_file, positive_min=self.positive_min, **kw,
        )  # fmt: skip

    @property
    def uses_side(self) -> bool:  # type: ignore[override]
        """deepfm reads the item / user / tag tables (its fields); the other networks only the ratings."""
        return self.kind == "deepfm"

    def _train(self, spec: TrainSpec) -> dict[str, Any]:
        if self.pretrain and spec.kind == "neumf":
            towers = {}
            for tower in ("gmf", "mlp"):
                net = (
                    {"dim": self.net.get("dim", 32)}
                    if tower == "gmf"
                    else {"dim": self.net.get("mlp_dim", 32), "layers": self.net.get("layers", [64, 32, 16])}
                )
                res = run(
                    dataclasses.replace(spec, kind=tower, net=net, out_dir=f"{spec.out_dir}/{tower}"),
                    self.distributor,
                    self.num_processes,
                    self.use_gpu,
                )
                towers[tower] = res["state"]
            spec = dataclasses.replace(spec, pretrained=towers, lr=self.pretrain_lr)
        return run(spec, self.distributor, self.num_processes, self.use_gpu)

    def fit(self, train: DataFrame, side: Any = None) -> DeepModel:
        self._check_train(train)
        tmp = None
        if self.work_dir is None:
            tmp = tempfile.TemporaryDirectory(prefix=f"recsys-{self.name}-")
        work = self.work_dir or tmp.name
        try:
            if self.kind == "deepfm" and self.side_file is None:
                return self._with_side(train, side, work).fit(train)
            hold = F.pmod(F.xxhash64(F.lit(self.seed), COL_USER, COL_ITEM), F.lit(1000)) < F.lit(int(self.valid_fraction * 1000))
            early = self.valid_fraction > 0
            if early:
                write_sorted(train.where(~hold), f"{work}/data/train")
                write_sorted(train.where(hold), f"{work}/data/valid")
                return self.fit_exported(
                    train, f"{work}/data/train", f"{work}/data/valid", work, refit_on=f"{work}/data/all" if self.refit else None
                )
            write_sorted(train, f"{work}/data/all")
            return self.fit_exported(train, f"{work}/data/all", None, work)
        finally:
            if tmp is not None:
                tmp.cleanup()

    def _with_side(self, train: DataFrame, side: Any, work: str) -> DeepRecommender:
        """This estimator with deepfm's field layout in ``net`` and its side tables written to ``work``."""
        from pathlib import Path

        from recsys_spark.torch.fmside import side_arrays

        stats = train.agg(F.max(COL_USER), F.max(COL_ITEM)).first()  # scalars
        if stats[0] is None:
            raise ValueError(f"{self.name}: cannot fit on empty training data")
        n_users, n_items = int(stats[0]) + 1, int(stats[1]) + 1
        layout, arrays = side_arrays(train, side, n_users, n_items, self.tag_vocab, self.tags_per_item, self.context)
        Path(work).mkdir(parents=True, exist_ok=True)
        path = f"{work}/side.npz"
        np.savez(path, **arrays)
        return dataclasses.replace(self, net={**self.net, "layout": layout}, side_file=path, work_dir=work)

    def fit_exported(
        self, train: DataFrame, data: str, valid: str | None, work: str, refit_on: str | None = None,
        n_users: int | None = None, n_items: int | None = None,
    ) -> DeepModel:  # fmt: skip
        """Train on exported Parquet (``data``, early stopping on ``valid``); ``train`` gives mu and the fallback baseline.

        ``refit_on``: a path where all of ``train`` is written, then trained on
        for the best epoch count.  ``n_users``/``n_items`` default to the largest
        index of ``train`` + 1 (the export's metadata gives the vocabulary sizes).
        """
        self._check_train(train)
        stats = train.agg(F.avg(COL_RATING), F.max(COL_USER), F.max(COL_ITEM)).first()  # scalars
        if stats[0] is None:
            raise ValueError(f"{self.name}: cannot fit on empty training data")
        mu = float(stats[0])
        n_users = n_users or int(stats[1]) + 1
        n_items = n_items or int(stats[2]) + 1
        base = BiasBaseline(scale=self.scale).fit(train)
        result = self._train(self._spec(data, valid, f"{work}/run", n_users, n_items, mu))
        info = {
            "epochs_run": len(result["history"]),
            "best_epoch": result["best_epoch"],
            "valid": result["best"],
            "metric": result["metric"],
            "history": result["history"],
        }
        if valid and refit_on:
            write_sorted(train, refit_on)
            spec = dataclasses.replace(
                self._spec(refit_on, None, f"{work}/refit", n_users, n_items, mu), epochs=max(1, result["best_epoch"] + 1)
            )
            result = self._train(spec)
            info["refit_epochs"] = spec.epochs
        info["state"] = result["state"]
        weights = {k: v.numpy() for k, v in load_state(result["state"]).items()}
        log.info("%s: trained %s (%d users x %d items), best epoch %s, valid %s %s", self.name, self.kind, n_users, n_items,
                 info["best_epoch"], info["metric"], info["valid"])  # fmt: skip
        return DeepModel(self.name, self.kind, self.net, self.explicit, n_users, n_items, mu, weights, base, info, self.score_batch)


__all__ = ["DeepModel", "DeepRecommender", "make_scorer", "weights_frame", "weights_from_frame", "write_sorted"]
