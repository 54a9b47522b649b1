"""The interface every model implements, and the prediction contracts.

An estimator's ``fit(train) -> model``; the fitted model answers

* ``predict(pairs)`` -> ``(user_idx, item_idx, prediction, model, source)``
  for exactly the pairs asked (one row each, none dropped), the prediction
  clipped to the rating scale; ``source`` says which part of the model
  answered (e.g. ``"bias"``, ``"item_mean"``, or a fallback such as
  ``"global_mean"`` for an unknown user and item);
* ``recommend(users, k)`` -> ``(user_idx, rank, item_idx, score, model)``,
  the ``k`` best items per user among those the user did not rate in
  training (fewer when fewer remain), rank 1 first, ties broken by the
  smaller ``item_idx``;
* ``save(path)`` / ``load(path)``: learned state as Parquet plus a JSON of
  parameters, round-trip exact.

Models are Spark-native: learned state is DataFrames (bias tables, factor
tables), never driver-side dicts that grow with the data.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from recsys_spark.io import fs
from recsys_spark.io.lines import with_contiguous_index
from recsys_spark.schemas import (
    COL_ITEM,
    COL_MODEL,
    COL_PREDICTION,
    COL_RANK,
    COL_RATING,
    COL_SCORE,
    COL_SOURCE,
    COL_USER,
    require_columns,
)

log = logging.getLogger(__name__)

PARAMS_FILE = "params.json"


@dataclasses.dataclass
class Scale:
    """The declared rating scale; predictions are clipped to it."""

    lo: float = 0.5
    hi: float = 5.0


def clip(col, scale: Scale):
    return F.least(F.lit(scale.hi), F.greatest(F.lit(scale.lo), col))


def as_predictions(df: DataFrame, name: str) -> DataFrame:
    """Select the rating-prediction contract columns, typed."""
    return df.select(
        F.col(COL_USER).cast("int"),
        F.col(COL_ITEM).cast("int"),
        F.col(COL_PREDICTION).cast("double"),
        F.lit(name).alias(COL_MODEL),
        F.col(COL_SOURCE).cast("string"),
    )


def as_topn(df: DataFrame, name: str) -> DataFrame:
    return df.select(
        F.col(COL_USER).cast("int"),
        F.col(COL_RANK).cast("int"),
        F.col(COL_ITEM).cast("int"),
        F.col(COL_SCORE).cast("double"),
        F.lit(name).alias(COL_MODEL),
    )


def topk_from_item_scores(
    users: DataFrame, item_scores: DataFrame, seen: DataFrame, k: int, name: str
) -> DataFrame:
    """Top-``k`` unseen items per user when the score does not depend on the user.

    Items are ranked once globally; user ``u`` needs at most the first
    ``k + n_seen(u)`` of them, so each user is joined (on rank) with exactly
    that many candidates: ``O(n_users * k + n_ratings)`` rows, no cross join
    with the catalogue.  ``item_scores``: ``(item_idx, score)``;
    ``seen``: ``(user_idx, item_idx)`` rated in training.
    """
    # the catalogue's rank by a distributed sort and per-partition offsets (no global window on one partition)
    ranked = with_contiguous_index(item_scores.select(COL_ITEM, COL_SCORE), [F.desc(COL_SCORE), F.asc(COL_ITEM)], "_g").select(
        COL_ITEM, COL_SCORE, (F.col("_g") + 1).alias("_g")
    )
    n_seen = seen.groupBy(COL_USER).agg(F.count("*").alias("_n"))
    want = users.select(COL_USER).distinct().join(n_seen, COL_USER, "left").fillna(0, ["_n"])
    total = ranked.agg(F.max("_g").alias("_m"))
    cand = (
        want.crossJoin(F.broadcast(total))
        .select(COL_USER, F.explode(F.sequence(F.lit(1), F.least(F.col("_m"), F.col("_n") + k))).alias("_g"))
        .join(ranked, "_g")
        .join(seen.select(COL_USER, COL_ITEM), [COL_USER, COL_ITEM], "left_anti")
    )
    w = Window.partitionBy(COL_USER).orderBy(F.desc(COL_SCORE), F.asc(COL_ITEM))
    top = cand.withColumn(COL_RANK, F.row_number().over(w)).where(F.col(COL_RANK) <= k)
    return as_topn(top, name)


def rank_candidates(cand: DataFrame, k: int, name: str) -> DataFrame:
    """Top-``k`` per user of scored candidates ``(user_idx, item_idx, score)``."""
    w = Window.partitionBy(COL_USER).orderBy(F.desc(COL_SCORE), F.asc(COL_ITEM))
    return as_topn(cand.withColumn(COL_RANK, F.row_number().over(w)).where(F.col(COL_RANK) <= k), name)


def top_k_mask(scores, k: int):
    """Per row of the ``users x items`` array ``scores``: the ``k`` best finite entries, ties at the boundary kept.

    Blockwise top-N kernels keep these as candidates; one window over the partial lists makes them exact.
    """
    import numpy as np

    n = scores.shape[1]
    if n > k:
        thr = np.partition(scores, n - k, axis=1)[:, n - k]
        return (scores >= thr[:, None]) & np.isfinite(scores)
    return np.isfinite(scores)


class RecommenderModel(ABC):
    """A fitted model. Subclasses hold DataFrames and implement the two answers."""

    name: str

    @abstractmethod
    def predict(self, pairs: DataFrame) -> DataFrame:
        """Rating predictions for every ``(user_idx, item_idx)`` row of ``pairs``."""

    @abstractmethod
    def recommend(self, users: DataFrame, k: int = 10) -> DataFrame:
        """Top-``k`` unseen items for every user in ``users`` (a ``user_idx`` column)."""

    # -- persistence -----------------------------------------------------
    @abstractmethod
    def _state(self) -> dict[str, DataFrame]:
        """Learned DataFrames by name (written as Parquet)."""

    @abstractmethod
    def _params(self) -> dict[str, Any]:
        """JSON-able parameters and scalars needed to rebuild the model."""

    @classmethod
    @abstractmethod
    def _from_state(cls, params: dict[str, Any], state: dict[str, DataFrame]) -> RecommenderModel: ...

    def save(self, path: str) -> None:
        spark = SparkSession.getActiveSession()
        with fs.atomic_output(spark, path) as tmp:
            for key, df in self._state().items():
                df.write.parquet(f"{tmp}/{key}")
            fs.write_json(spark, f"{tmp}/{PARAMS_FILE}", {"class": type(self).__name__, **self._params()})

    @classmethod
    def load(cls, path: str) -> RecommenderModel:
        spark = SparkSession.getActiveSession()
        params = json.loads(fs.read_text(spark, f"{path}/{PARAMS_FILE}"))
        params.pop("class", None)
        state = {key: spark.read.parquet(f"{path}/{key}") for key in cls.STATE_KEYS}
        return cls._from_state(params, state)

    STATE_KEYS: ClassVar[tuple[str, ...]] = ()
    # state tables :func:`materialize` leaves where they are (already computed and stored, too big for the heap)
    STORED_KEYS: ClassVar[tuple[str, ...]] = ()
    # True when ``recommend(users, k, items=...)`` can rank candidates nobody rated in training
    ranks_new_items: ClassVar[bool] = False


def load_model(path: str) -> RecommenderModel:
    """A model saved with :meth:`RecommenderModel.save` (the predict stage's ``model/``), whatever its class."""
    from recsys_spark import registry  # noqa: F401 -- imports every family's model class

    spark = SparkSession.getActiveSession()
    name = json.loads(fs.read_text(spark, f"{path}/{PARAMS_FILE}")).get("class")
    found: dict[str, type] = {}
    todo = list(RecommenderModel.__subclasses__())
    while todo:
        cls = todo.pop()
        found.setdefault(cls.__name__, cls)
        todo.extend(cls.__subclasses__())
    if name not in found:
        if name == "DeepModel":  # its module imports torch: only loaded when asked for
            from recsys_spark.torch.recommender import DeepModel

            return DeepModel.load(path)
        raise ValueError(f"{path}: saved model class {name!r} is not a known RecommenderModel (known: {', '.join(sorted(found))})")
    return found[name].load(path)


def materialize(model: RecommenderModel) -> RecommenderModel:
    """Cache and compute ``model``'s learned tables (so a fit's time is the fit's, and predictions do not redo it)."""
    from pyspark import StorageLevel

    frames = []  # a model may build some of them per call: keep the ones cached here (those the model cached are its own)
    for key, df in model._state().items():
        if key in model.STORED_KEYS:
            continue
        if df.storageLevel == StorageLevel.NONE:
            df.persist(StorageLevel.MEMORY_AND_DISK)
            frames.append(df)
        df.count()
    model._cached = frames  # type: ignore[attr-defined]
    return model


def release(model: RecommenderModel) -> None:
    """Drop what :func:`materialize` cached (the next model needs the memory)."""
    for df in getattr(model, "_cached", ()):
        df.unpersist()
    model._cached = []  # type: ignore[attr-defined]


class Recommender(ABC):
    """An estimator: configuration only; ``fit`` returns a :class:`RecommenderModel`."""

    name: str
    uses_side: ClassVar[bool] = False  # whether fit reads item / user side tables (``fit(train, side=...)``)

    @abstractmethod
    def fit(self, train: DataFrame) -> RecommenderModel: ...

    def fit_with(self, train: DataFrame, side: Any = None) -> RecommenderModel:
        """``fit(train)``, handing ``side`` (a :class:`~recsys_spark.content.SideData`) to a model that reads it."""
        return self.fit(train, side=side) if self.uses_side else self.fit(train)  # type: ignore[call-arg]

    @staticmethod
    def _check_train(train: DataFrame) -> None:
        require_columns(train, [COL_USER, COL_ITEM, COL_RATING], "training data")


__all__ = [
    "COL_PREDICTION", "Recommender", "RecommenderModel", "Scale", "as_predictions", "as_topn",
    "clip", "load_model", "materialize", "rank_candidates", "release", "top_k_mask", "topk_from_item_scores",
]  # fmt: skip
