"""The content recommender: :class:`ContentBased` and the :class:`ContentModel` it fits."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pyspark import StorageLevel
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import lineage
from recsys_spark.baselines import BiasBaseline, BiasTableModel
from recsys_spark.content.explain import explain
from recsys_spark.content.features import DEFAULT_WEIGHTS, IDX, VAL, ItemFeaturizer, to_long
from recsys_spark.content.hybrid import collaborative_vectors, concat_vectors
from recsys_spark.content.priors import (
    DEFAULT_AGE_EDGES,
    SEGMENTS_SCHEMA,
    counted_ratings,
    segment_prior,
    trend_prior,
    user_segments,
)
from recsys_spark.content.profiles import (
    Weighting,
    profile_sums,
    profile_vectors,
    update_profile_sums,
)
from recsys_spark.content.scoring import BROADCAST_MB, content_neighbors, lsh_content_neighbors, sparse_topk
from recsys_spark.io import fs
from recsys_spark.neighbors import KNNModel
from recsys_spark.recommender import (
    Recommender,
    RecommenderModel,
    Scale,
    as_predictions,
    as_topn,
    topk_from_item_scores,
)
from recsys_spark.schemas import (
    COL_ITEM,
    COL_RATING,
    COL_SCORE,
    COL_SEGMENT,
    COL_SOURCE,
    COL_TIMESTAMP,
    COL_USER,
)

log = logging.getLogger(__name__)



@dataclass
class SideData:
    """Side tables a content model reads: ``items`` (ITEMS_SCHEMA), optional ``tags`` and ``users``."""

    items: DataFrame
    tags: DataFrame | None = None
    users: DataFrame | None = None  # USERS_SCHEMA: demographics for segment priors, where the dataset has them


class ContentModel(RecommenderModel):
    ranks_new_items: ClassVar[bool] = True
    STATE_KEYS: ClassVar[tuple[str, ...]] = (
        "vectors", "vocabulary", "neighbors", "ratings", "user_bias", "item_bias", "item_score", "seen",
        "profile_sums", "profile_counts", "prior", "user_segments",
    )  # fmt: skip

    def __init__(
        self, name: str, params: dict[str, Any], vectors: DataFrame, vocabulary: DataFrame, neighbors: DataFrame,
        ratings: DataFrame, base: BiasTableModel, sums: DataFrame, counts: DataFrame, prior: DataFrame,
        segments: DataFrame, pipeline: PipelineModel | None = None,
    ) -> None:  # fmt: skip
        self.name = name
        self.params = params
        self.vectors = vectors  # (item_idx, indices, values): every catalogue item with features
        self.vocabulary = vocabulary
        self.neighbors = neighbors  # (a, b, sim, support): content (or hybrid) item-item
        self.ratings = ratings
        self.base = base
        self.sums, self.counts = sums, counts
        self.prior = prior  # (segment, item_idx, prior): segment 0 the global popularity prior
        self.segments = segments  # (user_idx, segment, segment_label): prior group per user; empty without groups
        self.pipeline = pipeline
        self._knn = KNNModel(
            name, {**params, "user_based": False, "centering": "baseline"}, neighbors, ratings, base
        )

    @property
    def scale(self) -> Scale:
        return self.base.scale

    @property
    def dim(self) -> int:
        return int(self.params["dim"])

    @property
    def broadcast_mb(self) -> float:
        """Item vectors up to this size are shipped to every top-N task (:func:`sparse_topk`); older saved models: the default."""
        return float(self.params.get("broadcast_mb", BROADCAST_MB))

    @property
    def grouped(self) -> bool:
        """Whether users have their own prior groups (demographic segments, time periods, or both)."""
        return bool(self.params.get("segments")) or float(self.params.get("trend_days") or 0) > 0

    # -- answers -------------------------------------------------------------------------
    def predict_with_confidence(self, pairs: DataFrame) -> DataFrame:
        out = self._knn.predict_with_confidence(pairs)
        return out.withColumn(
            COL_SOURCE,
            F.when(F.col(COL_SOURCE) == "knn", F.lit("content")).otherwise(F.col(COL_SOURCE)),
        )

    def predict(self, pairs: DataFrame) -> DataFrame:
        return as_predictions(self.predict_with_confidence(pairs), self.name)

    def profiles(self, users: DataFrame | None = None) -> DataFrame:
        prof = profile_vectors(self.sums, self.counts, self.params["weighting"])
        return prof if users is None else prof.join(users.select(COL_USER).distinct(), COL_USER)

    def recommend(self, users: DataFrame, k: int = 10, items: DataFrame | None = None) -> DataFrame:
        """Top-``k`` unseen items by ``cos(profile, item) + prior * popularity``.

        ``popularity`` is the user's segment prior where the model has
        segments (the global one for a user outside them).  Candidates: the
        training items (the top-N protocol's), or ``items`` (``item_idx``),
        e.g. new items nobody rated yet.  A user without a profile gets the
        prior's order (popularity; their segment's where they have one).
        """
        u = users.select(COL_USER).distinct()
        cand = (
            self.vectors
            if items is None
            else self.vectors.join(items.select(COL_ITEM).distinct(), COL_ITEM)
        )
        if items is None:
            cand = cand.join(self.ratings.select(COL_ITEM).distinct(), COL_ITEM)
        prof = self.profiles(u)
        seen = self.ratings.select(COL_USER, COL_ITEM)
        pw = float(self.params["prior"])
        segmented = self.grouped
        prior = self.prior if segmented else self.prior.where(F.col(COL_SEGMENT) == 0).drop(COL_SEGMENT)
        group = COL_SEGMENT if segmented else None
        top = sparse_topk(
            prof.join(self.segments, COL_USER, "left") if segmented else prof,
            cand,
            k,
            self.dim,
            exclude=seen.join(u, COL_USER),
            prior=prior,
            prior_weight=pw,
            left_group=group,
            broadcast_mb=self.broadcast_mb,
        )
        known = as_topn(top, self.name)
        unknown = u.join(prof.select(COL_USER), COL_USER, "left_anti")
        if segmented:  # no profile: the segment's prior alone
            empty = unknown.join(self.segments, COL_USER, "left").select(
                COL_USER, COL_SEGMENT, F.array().cast("array<int>").alias(IDX), F.array().cast("array<double>").alias(VAL)
            )
            excluded = seen.join(unknown, COL_USER)
            top = sparse_topk(
                empty, cand, k, self.dim, exclude=excluded, prior=prior, prior_weight=1.0, left_group=group, broadcast_mb=self.broadcast_mb
            )
            return known.unionByName(as_topn(top, self.name))
        cand_prior = cand.select(COL_ITEM).join(prior, COL_ITEM, "left").select(COL_ITEM, F.coalesce("prior", F.lit(0.0)).alias(COL_SCORE))
        return known.unionByName(topk_from_item_scores(unknown, cand_prior, seen, k, self.name))

    def explain(self, recs: DataFrame, items: DataFrame, n_terms: int = 3) -> DataFrame:
        return explain(
            recs, self.ratings, self.vectors, self.vocabulary, items, self.counts, n_terms,
            segments=self.segments if self.grouped else None, lately=float(self.params.get("trend_days") or 0) > 0,
        )  # fmt: skip

    def update(self, new_ratings: DataFrame) -> ContentModel:
        """A model whose profiles include ``new_ratings`` (the sums updated, nothing recomputed); the rest is unchanged."""
        sums, counts = update_profile_sums(self.sums, self.counts, new_ratings, to_long(self.vectors))
        return ContentModel(
            self.name,
            self.params,
            self.vectors,
            self.vocabulary,
            self.neighbors,
            self.ratings,
            self.base,
            sums,
            counts,
            self.prior,
            self.segments,
            self.pipeline,
        )

    # -- persistence ---------------------------------------------------------------------
    def _state(self) -> dict[str, DataFrame]:
        return {
            "vectors": self.vectors, "vocabulary": self.vocabulary, "neighbors": self.neighbors, "ratings": self.ratings,
            **self.base._state(), "profile_sums": self.sums, "profile_counts": self.counts, "prior": self.prior,
            "user_segments": self.segments,
        }  # fmt: skip

    def _params(self) -> dict[str, Any]:
        return {"params": self.params, "base": self.base._params()}

    def save(self, path: str) -> None:
        super().save(path)
        if self.pipeline is not None:  # the featurizer, so new items get the same transform
            self.pipeline.write().overwrite().save(f"{path}/featurizer")

    @classmethod
    def load(cls, path: str) -> ContentModel:
        model = super().load(path)
        assert isinstance(model, ContentModel)
        spark = SparkSession.getActiveSession()
        if fs.exists(spark, f"{path}/featurizer"):
            model.pipeline = PipelineModel.load(f"{path}/featurizer")
        return model

    @classmethod
    def _from_state(cls, params: dict[str, Any], state: dict[str, DataFrame]) -> ContentModel:
        base = BiasTableModel._from_state(params["base"], state)
        p = params["params"]
        return cls(
            p["name"], p, state["vectors"], state["vocabulary"], state["neighbors"], state["ratings"], base,
            state["profile_sums"], state["profile_counts"], state["prior"], state["user_segments"],
        )  # fmt: skip


@dataclass
class ContentBased(Recommender):
    """Content-based recommender (see the module docstring).  ``fit`` needs :class:`SideData` (``side``)."""

    uses_side: ClassVar[bool] = True
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    tag_min_df: int = 2
    features: Literal["content", "hybrid"] = "content"
    collaborative: Literal["corating", "als"] = "corating"  # hybrid: the collaborative half
    collaborative_weight: float = 1.0  # hybrid: its weight against the content half (1.0)
    max_neighbors: int = 50  # content neighbours kept per item (prediction)
    neighbors: Literal["exact", "lsh"] = "exact"
    broadcast_mb: float = BROADCAST_MB  # exact neighbours and top-N: item vectors up to this size are shipped to every task
    k: int = 40  # neighbours used per prediction
    min_k: int = 1
    damping: float = 1.0
    weighting: Weighting = "centred"
    prior: float = 0.0  # top-N: weight of the popularity prior added to the profile cosine
    segments: list[str] = field(default_factory=list)  # user attributes whose segments get their own prior (users table)
    age_edges: list[int] = field(default_factory=lambda: list(DEFAULT_AGE_EDGES))
    segment_shrink: float = 100.0  # ratings' worth of the global shares a segment's prior is shrunk towards
    trend_days: float = 0.0  # > 0: the prior counts the ratings of this many days before the user's latest one
    trend_shrink: float = 3000.0  # ratings' worth of the all-time shares the trend window is shrunk towards
    trend_step_days: float = 7.0  # users' times are cut to periods this long (one prior per period and segment)
    trend_max_cells: int = 20_000_000  # the trend prior is dense, (segment, period) groups x items: above this, the segment prior
    prior_skip_first: int = 0  # the prior leaves out each user's first ratings (by time)
    reg_user: float = 15.0
    reg_item: float = 10.0
    scale: Scale = None  # type: ignore[assignment]
    name: str = "content"

    def fit(self, train: DataFrame, side: SideData | None = None) -> ContentModel:
        """Fit on ``train`` with the item (and, for segment priors, user) tables of ``side``."""
        self._check_train(train)
        if side is None:
            raise ValueError(f"{self.name}: content models need item side data (items, tags); none was given")
        if self.features not in ("content", "hybrid"):
            raise ValueError(f"features must be content or hybrid, got {self.features!r}")
        cols = [c for c in (COL_USER, COL_ITEM, COL_RATING, COL_TIMESTAMP) if c in train.columns]
        ratings = train.select(*cols).persist(StorageLevel.MEMORY_AND_DISK)
        base = BiasBaseline(
            reg_user=self.reg_user,
            reg_item=self.reg_item,
            scale=self.scale or Scale(),
            name=self.name,
        ).fit(ratings)
        feats = ItemFeaturizer(weights=self.weights, tag_min_df=self.tag_min_df).fit(side.items, side.tags, ratings)
        vectors, dim = feats.vectors, feats.dim
        if self.features == "hybrid":
            collab = collaborative_vectors(ratings, self.collaborative, base=None if self.collaborative == "als" else base)
            n_collab = int(collab.select(F.max(F.aggregate(IDX, F.lit(-1), lambda a, x: F.greatest(a, x)))).first()[0] or -1) + 1
            vectors = concat_vectors(vectors, collab, dim, 1.0, self.collaborative_weight)
            dim += n_collab
            vectors = vectors.transform(lineage.cut)  # the featurizer's vectors are already materialized
        if self.neighbors == "lsh":
            nb = lsh_content_neighbors(vectors, dim, self.max_neighbors)
        else:
            nb = content_neighbors(vectors, dim, self.max_neighbors, broadcast_mb=self.broadcast_mb)
        nb = nb.transform(lineage.cut)
        sums, counts = profile_sums(ratings.select(COL_USER, COL_ITEM, COL_RATING), to_long(vectors))
        segments = None
        if self.segments:
            if side.users is None:
                log.warning(
                    "%s: segments %s asked for but no users table given: every user gets the global prior", self.name, self.segments
                )
            else:
                segments = user_segments(side.users, self.segments, self.age_edges).transform(lineage.cut)
                n_seg, n_global = segments.agg(
                    F.countDistinct(F.when(F.col(COL_SEGMENT) > 0, F.col(COL_SEGMENT))), F.count(F.when(F.col(COL_SEGMENT) == 0, 1))
                ).first()  # one pass over the checkpointed table
                log.info(
                    "%s: %d user segments by %s (segment 0, the global prior: %d users)",
                    self.name,
                    n_seg,
                    "/".join(self.segments),
                    n_global,
                )
                if n_seg == 0:  # e.g. ml-latest-small: no ages; the plain global prior, as without segments
                    segments = None
        has_ts = COL_TIMESTAMP in ratings.columns and ratings.where(F.col(COL_TIMESTAMP).isNotNull()).limit(1).count() > 0
        trend = float(self.trend_days) if self.trend_days > 0 and has_ts else 0.0
        skip = int(self.prior_skip_first) if has_ts else 0
        if (self.trend_days > 0 or self.prior_skip_first > 0) and not has_ts:
            log.warning("%s: trend_days / prior_skip_first need rating timestamps, which the ratings lack: off", self.name)
        counted = counted_ratings(ratings, skip)
        trended = None
        if trend:
            trended = trend_prior(
                ratings, segments, self.segment_shrink, trend, self.trend_shrink, self.trend_step_days, counted, self.trend_max_cells
            )
            if trended is None:
                log.warning("%s: the segment prior instead of the trend prior (trend_days recorded as 0)", self.name)
                trend = 0.0
        if trended is not None:
            prior, groups = trended
            log.info(
                "%s: trend prior over %g days before each user's latest rating (%g-day periods)", self.name, trend, self.trend_step_days
            )
        else:
            prior, groups = segment_prior(counted, segments, self.segment_shrink), segments
        params = {
            "name": self.name, "k": self.k, "min_k": self.min_k, "damping": self.damping, "similarity": f"{self.features}_cosine",
            "weighting": self.weighting, "prior": self.prior, "dim": dim, "groups": feats.groups, "weights": feats.weights,
            "features": self.features, "segments": list(self.segments) if segments is not None else [],
            "age_edges": list(self.age_edges), "segment_shrink": self.segment_shrink,
            "trend_days": trend, "trend_shrink": self.trend_shrink, "trend_step_days": self.trend_step_days, "prior_skip_first": skip,
            "broadcast_mb": self.broadcast_mb,
        }  # fmt: skip
        spark = ratings.sparkSession
        return ContentModel(
            self.name, params, vectors, feats.vocabulary, nb, ratings, base, sums.transform(lineage.cut), counts.transform(lineage.cut),
            prior.transform(lineage.cut),
            groups.transform(lineage.cut) if groups is not None else spark.createDataFrame([], SEGMENTS_SCHEMA), feats.pipeline,
        )  # fmt: skip
