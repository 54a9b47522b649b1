"""Sequence recommenders behind the estimator interface: ``sasrec`` and ``seq_gru``.

:class:`SequenceRecommender.fit(train)` builds each user's chronological
history in Spark, hands the histories to the driver through Arrow, trains the
network of :mod:`recsys_spark.torch.sequence` there (next-item cross-entropy
over the whole catalogue) and returns a :class:`SequenceModel`.

**Order inside a second.**  Ratings with the same timestamp have no order;
the history puts them in a seeded pseudo-random order (a hash of seed, user
and item), not by item index: the next-item protocol breaks its own ties by
item index, and a model trained on that order would learn the tie rule
instead of the users (half the consecutive ratings of ML-100K share their
second).

**Session mode** (``session_gap`` > 0 seconds): a history is cut into
sessions where more than ``session_gap`` seconds pass between two ratings;
training sequences are the sessions, and a user's list is computed from the
current (latest) session alone.  Already-rated items are excluded from the
whole history either way.

:class:`SequenceModel`:

* ``recommend``: a ``mapInPandas`` over the users' histories; each Python
  worker rebuilds the network once from the broadcast weights, reads the
  state at the last item, scores every training item, drops the ones the
  user rated, keeps the best ``k`` (ties by ``item_idx``).  Users without a
  training history get the popularity list (by count).
* ``explain``: the same lists with ``because``: the ``n_because`` past items
  with the largest attention weight from the user's last position (SASRec's
  last block averaged over heads, SeqGRU's pooling weights) and those
  weights, largest first.
* ``predict``: a top-N model: the popularity fallback's damped item means
  (``source="popularity"``).
* ``save``/``load``: weights as a ``(name, shape, values)`` table, the
  histories, the fallback's tables.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_spark.baselines import BiasTableModel, Popularity, PopularityRatings
from recsys_spark.recommender import Recommender, RecommenderModel, Scale, as_topn
from recsys_spark.schemas import COL_ITEM, COL_RANK, COL_SCORE, COL_TIMESTAMP, COL_USER, require_columns
from recsys_spark.spark import spark_context
from recsys_spark.torch.recommender import weights_frame, weights_from_frame
from recsys_spark.torch.sequence import SEQ_KINDS, current_session, cut_sessions, input_batch, load_seq_net, train_sequences

log = logging.getLogger(__name__)

HISTORY_DDL = "user_idx int, items array<int>, timestamps array<bigint>"
TOPN_DDL = "user_idx int, item_idx int, score double, rank int"
EXPLAINED_DDL = TOPN_DDL + ", because array<int>, because_weight array<double>"


def user_histories(ratings: DataFrame, seed: int) -> DataFrame:
    """``(user_idx, items, timestamps)``: each user's ratings in time order, ties in a seeded hash order (see module docstring)."""
    tie = F.xxhash64(F.lit(seed), COL_USER, COL_ITEM)
    h = ratings.groupBy(COL_USER).agg(
        F.sort_array(F.collect_list(F.struct(F.col(COL_TIMESTAMP).alias("t"), tie.alias("h"), F.col(COL_ITEM).alias("i")))).alias("_h")
    )
    return h.select(COL_USER, F.col("_h.i").alias("items"), F.col("_h.t").cast("array<bigint>").alias("timestamps"))


def make_lister(kind: str, n_items: int, net: dict[str, Any], weights: Any, catalogue: np.ndarray, k: int, session_gap: int,
                batch: int, n_because: int = 0, threads: int = 1):  # fmt: skip
    """The ``mapInPandas`` function: histories in, each user's top ``k`` out (with ``because`` when ``n_because`` > 0)."""

    def lists(frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        torch.set_num_threads(threads)
        w = weights.value if hasattr(weights, "value") else weights
        model = load_seq_net(kind, n_items, net, w)
        allowed = np.zeros(n_items, dtype=bool)
        allowed[catalogue] = True
        for frame in frames:
            for start in range(0, len(frame), batch):
                part = frame.iloc[start:start + batch]
                tails = [
                    current_session(np.asarray(i, np.int64), np.asarray(t, np.int64), session_gap)[-model.max_len:]
                    for i, t in zip(part["items"], part["timestamps"], strict=True)
                ]  # fmt: skip
                with torch.no_grad():
                    h, att = model.last_state(torch.from_numpy(input_batch(tails, model.max_len)))
                    scores = model.logits(h)[:, 1:].numpy().astype(np.float64)
                att = att.numpy().astype(np.float64)
                rows = []
                for r, (user, items) in enumerate(zip(part[COL_USER], part["items"], strict=True)):
                    s = scores[r]
                    s[~allowed] = -np.inf
                    s[np.asarray(items, np.int64)] = -np.inf
                    n_ok = int(np.isfinite(s).sum())
                    kk = min(k, n_ok)
                    if kk == 0:
                        continue
                    top = np.argpartition(-s, kk - 1)[:kk]
                    top = top[np.lexsort((top, -s[top]))]
                    out = {COL_USER: int(user), COL_ITEM: top.astype(np.int32), COL_SCORE: s[top],
                           COL_RANK: np.arange(1, kk + 1, dtype=np.int32)}  # fmt: skip
                    if n_because:
                        tail = tails[r]
                        wr = att[r, : len(tail)]
                        pick = np.lexsort((-np.arange(len(tail)), -wr))[:n_because]  # largest weight, then latest
                        out["because"] = [tail[pick].astype(np.int32).tolist()] * kk
                        out["because_weight"] = [wr[pick].tolist()] * kk
                    rows.append(pd.DataFrame(out))
                if rows:
                    yield pd.concat(rows, ignore_index=True)

    return lists


class SequenceModel(PopularityRatings, RecommenderModel):
    """A trained sequence network and the training histories it reads users' states from (see the module docstring)."""

    STATE_KEYS: ClassVar[tuple[str, ...]] = ("weights", "histories", "user_bias", "item_bias", "item_score", "seen")

    def __init__(
        self, name: str, kind: str, net: dict[str, Any], n_items: int, weights: dict[str, np.ndarray], histories: DataFrame,
        fallback: BiasTableModel, session_gap: int = 0, info: dict[str, Any] | None = None, score_batch: int = 256,
        n_because: int = 3,
    ) -> None:  # fmt: skip
        self.name, self.kind, self.net, self.n_items = name, kind, dict(net), n_items
        self.weights, self.histories, self.fallback = weights, histories, fallback
        self.session_gap, self.info, self.score_batch, self.n_because = session_gap, info or {}, score_batch, n_because
        self._broadcast = None
        self._catalogue: np.ndarray | None = None  # the training items, collected once (catalogue-sized)

    def network(self):
        """The trained network on the driver, in eval mode (for analysis)."""
        return load_seq_net(self.kind, self.n_items, self.net, self.weights)

    def _lists(self, users: DataFrame, k: int, n_because: int) -> tuple[DataFrame, DataFrame]:
        want = users.select(COL_USER).distinct()
        warm = want.join(self.histories, COL_USER)
        cold = want.join(self.histories.select(COL_USER), COL_USER, "left_anti")
        spark = self.histories.sparkSession
        if self._broadcast is None:
            self._broadcast = spark_context(spark, f"{self.name} scoring (broadcast weights)").broadcast(self.weights)
        if self._catalogue is None:
            items = np.asarray(sorted(r[0] for r in self.fallback.item_bias.select(COL_ITEM).collect()), dtype=np.int64)
            self._catalogue = items[items < self.n_items]
        fn = make_lister(self.kind, self.n_items, self.net, self._broadcast, self._catalogue, k, self.session_gap, self.score_batch,
                         n_because)  # fmt: skip
        return warm.mapInPandas(fn, EXPLAINED_DDL if n_because else TOPN_DDL), cold

    def recommend(self, users: DataFrame, k: int = 10) -> DataFrame:
        warm, cold = self._lists(users, k, 0)
        return as_topn(warm, self.name).unionByName(self.fallback.recommend(cold, k).withColumn("model", F.lit(self.name)))

    def explain(self, users: DataFrame, k: int = 10, n_because: int | None = None) -> DataFrame:
        """Lists of the users with a history, each row with the past items that weighed most (see the module docstring)."""
        warm, _ = self._lists(users, k, n_because or self.n_because)
        return warm.withColumn("model", F.lit(self.name))

    # -- persistence -------------------------------------------------------
    def _state(self) -> dict[str, DataFrame]:
        return {"weights": weights_frame(self.histories.sparkSession, self.weights), "histories": self.histories, **self.fallback._state()}

    def _params(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "net": self.net, "n_items": self.n_items, "session_gap": self.session_gap,
            "info": self.info, "score_batch": self.score_batch, "n_because": self.n_because, "fallback": self.fallback._params(),
        }  # fmt: skip

    @classmethod
    def _from_state(cls, params: dict[str, Any], state: dict[str, DataFrame]) -> SequenceModel:
        fallback = BiasTableModel._from_state(params["fallback"], state)
        weights = weights_from_frame(state["weights"])
        return cls(
            params["name"], params["kind"], params["net"], params["n_items"], weights, state["histories"], fallback,
            params["session_gap"], params["info"], params["score_batch"], params["n_because"],
        )  # fmt: skip


@dataclasses.dataclass
class SequenceRecommender(Recommender):
    """A sequence network trained on the users' chronological histories (see the module docstring)."""

    name: str = "sasrec"
    kind: str = "sasrec"  # one of sequence.SEQ_KINDS
    scale: Scale = None  # type: ignore[assignment]
    net: dict[str, Any] = dataclasses.field(default_factory=dict)  # dim, max_len, blocks, heads / hidden, dropout
    epochs: int = 100  # at most (early stopping with holdout)
    batch_size: int = 32  # windows per step
    lr: float = 3e-3
    weight_decay: float = 0.0
    seed: int = 42
    session_gap: int = 0  # seconds; > 0: sessions (see the module docstring)
    threads: int | None = None  # torch threads on the driver while training (None: torch's default)
    score_batch: int = 256  # users per scoring step
    n_because: int = 3
    holdout: bool = True  # early stopping on each sequence's last training item (see sequence.py)
    patience: int = 5

    def __post_init__(self) -> None:
        if self.kind not in SEQ_KINDS:
            raise ValueError(f"kind must be one of {SEQ_KINDS}, got {self.kind!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.session_gap < 0:
            raise ValueError(f"{self.name}: epochs and batch_size must be >= 1 and session_gap >= 0")

    def fit(self, train: DataFrame) -> SequenceModel:
        self._check_train(train)
        require_columns(train, [COL_TIMESTAMP], f"{self.name} training data (histories need their order)")
        t0 = time.perf_counter()
        hist = user_histories(train, self.seed)  # cached by materialize where the model is used (release frees it)
        pdf = hist.toPandas()  # one row per user, through Arrow: the histories are the training set, on the driver
        # by user: the sequences' order seeds the batches, so it must not depend on how Spark partitioned the input
        pdf = pdf.sort_values(COL_USER, kind="stable").reset_index(drop=True)
        if len(pdf) == 0:
            raise ValueError(f"{self.name}: the training data is empty")
        n_items = int(max(int(np.max(i)) for i in pdf["items"])) + 1
        seqs: list[np.ndarray] = []
        for items, ts in zip(pdf["items"], pdf["timestamps"], strict=True):
            items = np.asarray(items, np.int64)
            if self.session_gap:
                s = cut_sessions(np.asarray(ts, np.int64), self.session_gap)
                seqs.extend(items[s == j] for j in np.unique(s))
            else:
                seqs.append(items)
        weights, info = train_sequences(
            self.kind, seqs, n_items, self.net, self.epochs, self.batch_size, self.lr, self.weight_decay, self.seed,
            self.threads, self.name, self.holdout, self.patience,
        )  # fmt: skip
        fallback = Popularity(kind="count", scale=self.scale or Scale(), name=self.name).fit(train)
        info.update({"users": int(len(pdf)), "sequences": len(seqs), "fit_s": round(time.perf_counter() - t0, 3)})
        log.info("%s: trained %s on %d sequences (%d users, %d items) in %.1f s", self.name, self.kind, len(seqs), len(pdf),
                 n_items, info["fit_s"])  # fmt: skip
        return SequenceModel(self.name, self.kind, self.net, n_items, weights, hist, fallback, self.session_gap, info,
                             self.score_batch, self.n_because)  # fmt: skip


__all__ = ["SequenceModel", "SequenceRecommender", "make_lister", "user_histories"]
