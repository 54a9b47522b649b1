"""Content-based recommendations: item features, user profiles, cold start, explanations.

Item features (:class:`ItemFeaturizer`, all ``pyspark.ml.feature``)
--------------------------------------------------------------------
Each item becomes one L2-normalised sparse vector made of feature *groups*:

===============  ============================================================
``genres``       TF-IDF over the item's genres (``CountVectorizer`` + ``IDF``)
``tags``         TF-IDF over its normalised user tags (lower case, punctuation
                 and repeated spaces removed; each application counts once,
                 so a tag many users gave weighs more); ``tag_min_df``
                 drops tags seen on fewer items
``year``         the release decade, one-hot
``popularity``   ``log2(1 + training ratings)`` as a thermometer code
                 (``pop>=1``, ``pop>=2``, ...): items of similar popularity
                 share more dimensions
``recency``      where the item's training ratings sit in the training time
                 window (mean timestamp, tenths), thermometer code
===============  ============================================================

Each group is L2-normalised on its own, multiplied by ``sqrt(weight)`` and
the concatenation normalised again, so the cosine of two items is
``sum_g w_g cos_g / sqrt(W_a W_b)`` (``W`` the summed weights of the groups an
item has): a weight scales its group's share of the similarity linearly.  The
fitted ``PipelineModel`` (vocabularies and IDF included) is saved with the
features, so a new item is featurised by the same transform
(:meth:`ItemFeatures.transform`).  Vectors are kept as
``(item_idx, indices, values)``; :data:`VOCAB_SCHEMA` names every index.

Similarity, profiles and scores
-------------------------------
* :func:`sparse_topk` scores a block of sparse rows against a block of items
  with one scipy sparse product per (left block, item block) task -- the
  same layout as :func:`recsys_spark.factorization.model.factor_topk` -- and
  keeps each row's best ``k``; :func:`content_neighbors` uses it for the
  item-item neighbour table ``(a, b, sim, support)`` (``support``: shared
  non-zero features), the shape of the collaborative tables so the two can be
  compared and fused.  :func:`lsh_content_neighbors` is the approximate
  version for large catalogues (``BucketedRandomProjectionLSH``).
* A user profile is kept as sums (:func:`profile_sums`): per feature
  ``s_rx = sum r x`` and ``s_x = sum x`` over the items the user rated, per
  user ``n`` and ``s_r = sum r``.  The mean-centred, rating-weighted profile
  is ``s_rx - (s_r / n) s_x = sum (r - mean_u) x``; new ratings add to the
  sums (:func:`update_profile_sums`), which equals recomputing from scratch.
* :class:`ContentBased` (registered as ``content`` and ``content_hybrid``):
  rating prediction is the bias baseline plus a similarity-weighted deviation
  over the content neighbours of the item that the user rated (the kNN
  formula of :mod:`recsys_spark.neighborhood` on the content table, so an item
  nobody rated still gets a personal prediction); top-N ranks unseen items by
  ``cos(profile, item)`` plus ``prior`` times the item's normalised log
  popularity (0 turns it off).  ``features="hybrid"`` appends collaborative
  item vectors (:func:`collaborative_vectors`) to the content vectors.
* With ``segments`` (user attributes from the users table: ``age``,
  ``gender``, ``occupation``; :func:`user_segments`) the popularity is the
  user's segment's, shrunk towards the global one (:func:`segment_prior`):
  what a new user's age says about what they will rate, where their few
  ratings' features say little.  Users with an attribute unknown, and
  datasets without it, get the global prior.
* With ``trend_days`` the popularity is what was rated in the days before the
  user's latest rating (:func:`trend_prior`; never later ratings), shrunk
  towards the all-time shares, times the segment's lift where there is one:
  a catalogue's draw moves with time (new releases), and a user's time says
  which part of it they meet.  ``prior_skip_first`` leaves each user's first
  ratings out of every count (:func:`counted_ratings`).

Cold start, explanations
------------------------
:func:`knowledge_based` serves a user with no ratings from the genres they
pick; :func:`explain` gives every recommendation a reason built from data: the
rated item that contributed most and the features profile and item share.
The cold-start protocols live in :mod:`recsys_spark.coldstart`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import IDF, CountVectorizer, ElementwiseProduct, Normalizer, VectorAssembler
from pyspark.ml.linalg import SparseVector, Vectors
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark.baselines import BiasBaseline, BiasTableModel
from recsys_spark.io import fs
from recsys_spark.neighborhood import KNNModel
from recsys_spark.recommender import (
    PARAMS_FILE,
    Recommender,
    RecommenderModel,
    Scale,
    as_predictions,
    as_topn,
    topk_from_item_scores,
)
from recsys_spark.schemas import (
    COL_AGE,
    COL_GENDER,
    COL_GENRES,
    COL_ITEM,
    COL_OCCUPATION,
    COL_RANK,
    COL_RATING,
    COL_SCORE,
    COL_SEGMENT,
    COL_SOURCE,
    COL_TAG,
    COL_TIMESTAMP,
    COL_TITLE,
    COL_USER,
    COL_YEAR,
    NB_A,
    NB_B,
    NB_SIM,
    NB_SUPPORT,
    require_columns,
)
from recsys_spark.split import hash_uniform

log = logging.getLogger(__name__)

GROUPS = ("genres", "tags", "year", "popularity", "recency")
TFIDF_GROUPS = ("genres", "tags")
IDX, VAL = "indices", "values"
FEATURE, VALUE = "feature", "value"
VECTORS_DDL = f"{COL_ITEM} int, {IDX} array<int>, {VAL} array<double>"
VOCAB_SCHEMA = T.StructType(
    [
        T.StructField(FEATURE, T.IntegerType(), False),
        T.StructField("group", T.StringType(), False),
        T.StructField("term", T.StringType(), False),
        T.StructField("idf", T.DoubleType(), True),
    ]
)
DEFAULT_WEIGHTS = {"genres": 1.0, "tags": 1.0, "year": 0.5, "popularity": 0.5, "recency": 0.25}


# -- item documents and the featurizer ------------------------------------------------------


def normalize_tag(col: F.Column) -> F.Column:
    """Lower case, anything but letters/digits to a space, spaces collapsed and trimmed."""
    return F.trim(
        F.regexp_replace(F.regexp_replace(F.lower(col), r"[^\p{L}\p{N}]+", " "), r"\s+", " ")
    )


def _thermometer(prefix: str, value: F.Column, steps: int) -> F.Column:
    """``[prefix>=1, ..., prefix>=floor(value)]`` (empty below 1), at most ``steps`` tokens."""
    n = F.least(F.floor(value).cast("int"), F.lit(steps))
    return F.when(
        n >= 1,
        F.transform(
            F.sequence(F.lit(1), n), lambda x: F.concat(F.lit(f"{prefix}>="), x.cast("string"))
        ),
    ).otherwise(F.array().cast("array<string>"))


def item_documents(items: DataFrame, tags: DataFrame | None, ratings: DataFrame) -> DataFrame:
    """One row per catalogue item: a token array per group (empty where the item has nothing).

    ``ratings`` are the *training* ratings: popularity and recency come from
    them only (an item with none has neither), so held-out ratings never
    reach a feature.
    """
    require_columns(items, [COL_ITEM, COL_GENRES], "items")
    genres = F.array_distinct(
        F.filter(
            F.transform(F.col(COL_GENRES), lambda g: F.lower(F.trim(g))),
            lambda g: (g != "") & (g != "(no genres listed)"),
        )
    )
    year = F.col(COL_YEAR) if COL_YEAR in items.columns else F.lit(None).cast("int")
    docs = items.select(
        F.col(COL_ITEM).cast("int").alias(COL_ITEM),
        genres.alias("genres"),
        F.when(
            year.isNotNull(),
            F.array(
                F.concat(F.lit("decade:"), (F.floor(year / 10) * 10).cast("string"), F.lit("s"))
            ),
        )
        .otherwise(F.array().cast("array<string>"))
        .alias("year"),
    )
    if tags is not None:
        t = tags.select(COL_ITEM, normalize_tag(F.col(COL_TAG)).alias("_t")).where(
            F.col("_t") != ""
        )
        per_item = t.groupBy(COL_ITEM).agg(F.collect_list("_t").alias("tags"))
        docs = docs.join(per_item, COL_ITEM, "left")
    else:
        docs = docs.withColumn("tags", F.lit(None).cast("array<string>"))
    has_ts = COL_TIMESTAMP in ratings.columns
    ts = F.col(COL_TIMESTAMP).cast("double") if has_ts else F.lit(None).cast("double")
    stats = ratings.groupBy(COL_ITEM).agg(F.count("*").alias("_n"), F.avg(ts).alias("_t"))
    window = ratings.agg(F.min(ts).alias("_t0"), F.max(ts).alias("_t1"))
    docs = docs.join(stats, COL_ITEM, "left").crossJoin(F.broadcast(window))
    rel = (F.col("_t") - F.col("_t0")) / F.greatest(F.col("_t1") - F.col("_t0"), F.lit(1.0)) * 10
    return docs.select(
        COL_ITEM,
        "genres",
        F.coalesce("tags", F.array().cast("array<string>")).alias("tags"),
        "year",
        _thermometer("pop", F.log2(1 + F.coalesce(F.col("_n"), F.lit(0)).cast("double")), 20).alias(
            "popularity"
        ),
        F.when(F.col("_t").isNotNull(), _thermometer("recency", rel, 10))
        .otherwise(F.array().cast("array<string>"))
        .alias("recency"),
    )


_PARTS_TYPE = T.StructType(
    [
        T.StructField(IDX, T.ArrayType(T.IntegerType())),
        T.StructField(VAL, T.ArrayType(T.DoubleType())),
    ]
)


@F.udf(returnType=_PARTS_TYPE)
def _sparse_parts(v):
    if isinstance(v, SparseVector):
        keep = v.values != 0
        return (v.indices[keep].tolist(), v.values[keep].tolist())
    arr = v.toArray()
    nz = np.flatnonzero(arr)
    return (nz.tolist(), arr[nz].tolist())


def vectors_from(df: DataFrame, col: str = "features", key: str = COL_ITEM) -> DataFrame:
    """``(key, indices, values)`` from an ML vector column (zeros dropped)."""
    p = _sparse_parts(F.col(col))
    return df.select(F.col(key), p[IDX].alias(IDX), p[VAL].alias(VAL))


def to_long(vectors: DataFrame, key: str = COL_ITEM) -> DataFrame:
    """``(key, feature, value)``: one row per non-zero."""
    z = F.explode(F.arrays_zip(F.col(IDX).alias("i"), F.col(VAL).alias("v"))).alias("_z")
    return (
        vectors.select(key, z)
        .select(key, F.col("_z.i").alias(FEATURE), F.col("_z.v").alias(VALUE))
        .where(F.col(VALUE) != 0)
    )


def from_long(long: DataFrame, key: str, normalize: bool = False) -> DataFrame:
    """``(key, indices, values)`` from ``(key, feature, value)``, indices sorted; optionally L2-normalised."""
    agg = long.groupBy(key).agg(
        F.sort_array(
            F.collect_list(F.struct(F.col(FEATURE).alias("i"), F.col(VALUE).alias("v")))
        ).alias("_s")
    )
    vals = F.col("_s.v")
    if normalize:
        norm = F.sqrt(F.aggregate(vals, F.lit(0.0), lambda acc, x: acc + x * x))
        vals = F.when(norm > 0, F.transform(vals, lambda x: x / norm)).otherwise(vals)
    return agg.select(F.col(key), F.col("_s.i").alias(IDX), vals.alias(VAL))


@dataclass
class ItemFeatures:
    """Fitted item features: the transform, its vocabulary and the vectors of the catalogue."""

    pipeline: PipelineModel
    vocabulary: DataFrame  # VOCAB_SCHEMA
    vectors: DataFrame  # (item_idx, indices, values), L2-normalised
    groups: dict[str, list[int]]  # group -> [offset, size] in the vector
    weights: dict[str, float]

    @property
    def dim(self) -> int:
        return max((o + s for o, s in self.groups.values()), default=0)

    def transform(self, items: DataFrame, tags: DataFrame | None, ratings: DataFrame) -> DataFrame:
        """Vectors of (possibly new) items with the fitted vocabularies and IDF weights."""
        return vectors_from(self.pipeline.transform(item_documents(items, tags, ratings)))

    def save(self, path: str) -> None:
        spark = SparkSession.getActiveSession()
        with fs.atomic_output(spark, path) as tmp:
            self.pipeline.write().save(f"{tmp}/pipeline")
            self.vocabulary.write.parquet(f"{tmp}/vocabulary")
            self.vectors.write.parquet(f"{tmp}/vectors")
            fs.write_json(
                spark, f"{tmp}/{PARAMS_FILE}", {"groups": self.groups, "weights": self.weights}
            )

    @classmethod
    def load(cls, path: str) -> ItemFeatures:
        spark = SparkSession.getActiveSession()
        meta = json.loads(fs.read_text(spark, f"{path}/{PARAMS_FILE}"))
        return cls(
            PipelineModel.load(f"{path}/pipeline"), spark.read.parquet(f"{path}/vocabulary"),
            spark.read.parquet(f"{path}/vectors"), meta["groups"], meta["weights"],
        )  # fmt: skip


@dataclass
class ItemFeaturizer:
    """Fits :class:`ItemFeatures` (see the module docstring); ``weights`` per group, 0 drops a group."""

    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    tag_min_df: int = 2  # a tag must be on at least this many items
    vocab_size: int = 20_000  # per TF-IDF group

    def fit(self, items: DataFrame, tags: DataFrame | None, ratings: DataFrame) -> ItemFeatures:
        unknown = set(self.weights) - set(GROUPS)
        if unknown:
            raise ValueError(
                f"unknown feature group(s) {sorted(unknown)}; groups: {', '.join(GROUPS)}"
            )
        docs = item_documents(items, tags, ratings).persist(StorageLevel.MEMORY_AND_DISK)
        stages: list[Any] = []
        used: list[str] = []
        wanted = [g for g in GROUPS if float(self.weights.get(g, 0.0)) > 0]
        n_terms = self._terms_per_group(docs, wanted)  # one job for every group
        for g in wanted:
            min_df = float(self.tag_min_df) if g == "tags" else 1.0
            if n_terms.get(g, 0) == 0:  # e.g. no tags in ML-100K: the group is simply absent
                log.info("feature group %s: no terms, skipped", g)
                continue
            used.append(g)
            tf_col = f"_{g}_tf"
            if g in TFIDF_GROUPS:
                stages += [
                    CountVectorizer(
                        inputCol=g, outputCol=tf_col, minDF=min_df, vocabSize=self.vocab_size
                    ),
                    IDF(inputCol=tf_col, outputCol=f"_{g}_w"),
                ]
            else:
                stages.append(CountVectorizer(inputCol=g, outputCol=f"_{g}_w", binary=True))
            stages.append(Normalizer(inputCol=f"_{g}_w", outputCol=f"_{g}_n", p=2.0))
        if not used:
            raise ValueError(
                "no feature group has any term: items need genres, tags, a year or training ratings"
            )
        fitted = Pipeline(stages=stages).fit(docs)
        vocab_rows: list[tuple[int, str, str, float | None]] = []
        groups: dict[str, list[int]] = {}
        offset = 0
        scaling: list[float] = []
        cvs = [s for s in fitted.stages if hasattr(s, "vocabulary")]
        idfs = {s.getInputCol(): s for s in fitted.stages if hasattr(s, "idf")}
        for g, cv in zip(used, cvs, strict=True):
            idf_model = idfs.get(f"_{g}_tf")
            idf = idf_model.idf.toArray() if idf_model is not None else None
            for j, term in enumerate(cv.vocabulary):
                vocab_rows.append((offset + j, g, term, float(idf[j]) if idf is not None else None))
            groups[g] = [offset, len(cv.vocabulary)]
            scaling += [math.sqrt(float(self.weights[g]))] * len(cv.vocabulary)
            offset += len(cv.vocabulary)
        tail = [
            VectorAssembler(inputCols=[f"_{g}_n" for g in used], outputCol="_raw"),
            ElementwiseProduct(
                inputCol="_raw", outputCol="_weighted", scalingVec=Vectors.dense(scaling)
            ),
            Normalizer(inputCol="_weighted", outputCol="features", p=2.0),
        ]
        pipeline = PipelineModel(stages=[*fitted.stages, *tail])
        spark = items.sparkSession
        vocabulary = spark.createDataFrame(vocab_rows, VOCAB_SCHEMA)
        vectors = vectors_from(pipeline.transform(docs)).localCheckpoint()  # materialized while docs is cached
        docs.unpersist()
        log.info(
            "item features: %d dimensions in groups %s",
            offset,
            {g: s for g, (_, s) in groups.items()},
        )
        return ItemFeatures(
            pipeline, vocabulary, vectors, groups, {g: float(self.weights[g]) for g in used}
        )

    def _terms_per_group(self, docs: DataFrame, groups: list[str]) -> dict[str, int]:
        """Distinct terms per group that pass the group's document-frequency floor (one Spark job)."""
        if not groups:
            return {}
        pairs = F.explode(F.array(*[F.struct(F.lit(g).alias("g"), F.col(g).alias("ts")) for g in groups])).alias("_p")
        exploded = docs.select(pairs).select(F.col("_p.g").alias("g"), F.explode(F.array_distinct("_p.ts")).alias("t"))
        floor = F.when(F.col("g") == "tags", F.lit(self.tag_min_df)).otherwise(F.lit(1))
        kept = exploded.groupBy("g", "t").agg(F.count("*").alias("df")).where(F.col("df") >= floor)
        return {r["g"]: int(r["n"]) for r in kept.groupBy("g").agg(F.count("*").alias("n")).collect()}


# -- block scoring ---------------------------------------------------------------------------


def _csr(rows: list[Any], dim: int) -> Any:
    from scipy import sparse

    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    for n, r in enumerate(rows):
        indptr[n + 1] = indptr[n] + len(r[IDX])
    idx = (
        np.concatenate([np.asarray(r[IDX], dtype=np.int64) for r in rows])
        if indptr[-1]
        else np.zeros(0, np.int64)
    )
    val = (
        np.concatenate([np.asarray(r[VAL], dtype=np.float64) for r in rows])
        if indptr[-1]
        else np.zeros(0)
    )
    return sparse.csr_matrix((val, idx, indptr), shape=(len(rows), dim))


def _blocks(rows: DataFrame, key: str, n_blocks: int, extra: list[str], out: str) -> DataFrame:
    """One row per block (``key mod n_blocks``): ``out`` = the block's rows ``(k, indices, values, *extra)`` sorted by key."""
    rows = rows.withColumn("_b", F.pmod(F.col(key), F.lit(n_blocks)))
    return rows.groupBy("_b").agg(F.sort_array(F.collect_list(F.struct(F.col(key).alias("k"), IDX, VAL, *extra))).alias(out)).drop("_b")


def sparse_topk(
    left: DataFrame, items: DataFrame, k: int, dim: int, *, left_key: str = COL_USER, exclude: DataFrame | None = None,
    exclude_self: bool = False, prior: DataFrame | None = None, prior_weight: float = 0.0, min_score: float | None = None,
    support: bool = False, left_block: int = 1024, item_block: int = 4096, left_group: str | None = None,
) -> DataFrame:  # fmt: skip
    """Each left row's best ``k`` items by ``left . item (+ prior_weight * prior)``: ``(left_key, item_idx, score[, support], rank)``.

    ``left``: ``(left_key, indices, values)``; ``items``: ``(item_idx, indices,
    values)``; ``exclude``: ``(left_key, item_idx)`` pairs never returned (seen
    items); ``exclude_self`` drops ``item == key`` (item-item);  ``prior``:
    ``(item_idx, prior)``, or with ``left_group`` (a small non-negative int
    column of ``left``, null read as 0) ``(group, item_idx, prior)``: each
    left row adds its group's prior (0 where its group has none for the
    item); ``min_score`` keeps only larger scores;
    ``support`` adds the count of shared non-zero features.  Blocks of rows and
    items meet in one task each (a scipy sparse product); only each task's
    partial top-k is shuffled, and one window makes the result exact (ties by
    the smaller ``item_idx``).
    """
    n_left, n_items = left.count(), items.count()
    out_cols = [left_key, COL_ITEM, COL_SCORE] + ([NB_SUPPORT] if support else [])
    schema = f"{left_key} int, {COL_ITEM} int, {COL_SCORE} double" + (
        f", {NB_SUPPORT} long" if support else ""
    )
    if n_left == 0 or n_items == 0:
        return left.sparkSession.createDataFrame([], f"{schema}, {COL_RANK} int")
    n_lb = max(1, math.ceil(n_left / left_block))
    n_ib = max(1, math.ceil(n_items / item_block))
    lrows = left.select(left_key, IDX, VAL, (F.coalesce(F.col(left_group), F.lit(0)) if left_group else F.lit(0)).cast("int").alias("_g"))
    if exclude is not None:
        ex = exclude.groupBy(left_key).agg(F.collect_list(COL_ITEM).alias("_x"))
        lrows = lrows.join(ex, left_key, "left")
    else:
        lrows = lrows.withColumn("_x", F.lit(None).cast("array<int>"))
    lrows = lrows.withColumn("_x", F.coalesce("_x", F.array().cast("array<int>")))
    u = _blocks(lrows, left_key, n_lb, ["_x", "_g"], "_l")
    irows = items.select(COL_ITEM, IDX, VAL)
    if prior is None:
        irows = irows.withColumn("_p", F.array(F.lit(0.0)))
    elif left_group is None:  # one prior for every row: group 0
        p = prior.select(COL_ITEM, F.col(prior.columns[1]).cast("double").alias("_v"))
        irows = irows.join(p, COL_ITEM, "left").withColumn("_p", F.array(F.coalesce("_v", F.lit(0.0)))).drop("_v")
    else:  # per item, a dense array of its prior in every group 0..G-1
        grp, val = [c for c in prior.columns if c != COL_ITEM][:2]
        n_groups = int(prior.agg(F.max(grp)).first()[0] or 0) + 1
        p = prior.groupBy(COL_ITEM).agg(F.map_from_arrays(F.collect_list(F.col(grp).cast("int")), F.collect_list(F.col(val).cast("double"))).alias("_m"))
        dense = F.transform(F.sequence(F.lit(0), F.lit(n_groups - 1)), lambda g: F.coalesce(F.element_at(F.col("_m"), g), F.lit(0.0)))
        irows = irows.join(p, COL_ITEM, "left").withColumn("_p", F.when(F.col("_m").isNull(), F.array_repeat(F.lit(0.0), n_groups)).otherwise(dense)).drop("_m")
    i = _blocks(irows, COL_ITEM, n_ib, ["_p"], "_i")
    pairs = u.crossJoin(i).repartition(max(1, min(n_lb * n_ib, 200)))
    pw, floor = float(prior_weight), min_score

    def score_block(ls: list[Any], its: list[Any]) -> pd.DataFrame:
        lid = np.array([r["k"] for r in ls], dtype=np.int64)
        iid = np.array([r["k"] for r in its], dtype=np.int64)
        L, R = _csr(ls, dim), _csr(its, dim)
        S = np.asarray((L @ R.T).todense(), dtype=np.float64)
        if pw:
            P = np.array([r["_p"] for r in its], dtype=np.float64).reshape(len(its), -1)  # item x group
            G = P.shape[1]
            g = np.array([r["_g"] for r in ls], dtype=np.int64)
            P = np.hstack([P, np.zeros((len(its), 1))])  # a group without a prior adds 0
            S += pw * P[:, np.where((g >= 0) & (g < G), g, G)].T
        for row, r in enumerate(ls):
            x = np.asarray(r["_x"], dtype=np.int64)
            if exclude_self:
                x = np.append(x, r["k"])
            if len(x):
                pos = np.searchsorted(iid, x)
                ok = pos < len(iid)
                pos, x = pos[ok], x[ok]
                S[row, pos[iid[pos] == x]] = -np.inf
        if floor is not None:
            S[S <= floor] = -np.inf
        n = S.shape[1]
        top = (
            np.argpartition(-S, k - 1, axis=1)[:, :k]
            if n > k
            else np.tile(np.arange(n), (len(ls), 1))
        )
        rr = np.repeat(np.arange(len(ls)), top.shape[1])
        cc = top.ravel()
        sc = S[rr, cc]
        keep = np.isfinite(sc)
        rr, cc, sc = rr[keep], cc[keep], sc[keep]
        res = {
            left_key: lid[rr].astype(np.int32),
            COL_ITEM: iid[cc].astype(np.int32),
            COL_SCORE: sc,
        }
        if support:
            Lb, Rb = L.copy(), R.copy()
            Lb.data[:] = 1.0
            Rb.data[:] = 1.0
            shared = (Lb @ Rb.T).tocsr()
            res[NB_SUPPORT] = np.asarray(shared[rr, cc]).ravel().astype(np.int64)
        return pd.DataFrame(res)

    def score(batches):
        for pdf in batches:
            out = [score_block(ls, its) for ls, its in zip(pdf["_l"], pdf["_i"], strict=True)]
            yield pd.concat(out) if out else pd.DataFrame({c: [] for c in out_cols})

    cand = pairs.mapInPandas(score, schema)
    w = Window.partitionBy(left_key).orderBy(F.desc(COL_SCORE), F.asc(COL_ITEM))
    return cand.withColumn(COL_RANK, F.row_number().over(w)).where(F.col(COL_RANK) <= k)


def content_neighbors(
    vectors: DataFrame, dim: int, max_neighbors: int = 50, min_sim: float = 0.0
) -> DataFrame:
    """Item-item content neighbour table ``(a, b, sim, support)``: each item's ``max_neighbors`` most similar (cosine > ``min_sim``)."""
    top = sparse_topk(
        vectors.withColumnRenamed(COL_ITEM, NB_A), vectors, max_neighbors, dim, left_key=NB_A,
        exclude_self=True, min_score=min_sim, support=True,
    )  # fmt: skip
    return top.select(
        F.col(NB_A).cast("int"),
        F.col(COL_ITEM).cast("int").alias(NB_B),
        F.col(COL_SCORE).alias(NB_SIM),
        F.col(NB_SUPPORT).cast("long"),
    )


def lsh_content_neighbors(
    vectors: DataFrame,
    dim: int,
    max_neighbors: int = 50,
    min_sim: float = 0.1,
    num_hash_tables: int = 8,
    bucket_length: float = 0.5,
    seed: int = 42,
) -> DataFrame:
    """Approximate :func:`content_neighbors` for large catalogues: random-projection LSH on the unit vectors.

    Pairs that collide are scored exactly; for unit vectors the Euclidean
    distance ``d`` gives ``cos = 1 - d^2 / 2``, so ``min_sim`` is the join
    threshold ``sqrt(2 - 2 min_sim)``.  ``support`` is the shared-feature count.
    """
    from pyspark.ml.feature import BucketedRandomProjectionLSH
    from pyspark.ml.linalg import VectorUDT

    @F.udf(returnType=VectorUDT())
    def to_vec(idx, val):
        return Vectors.sparse(dim, idx, val)

    v = vectors.select(COL_ITEM, to_vec(IDX, VAL).alias("v"), IDX)
    model = BucketedRandomProjectionLSH(
        inputCol="v",
        outputCol="h",
        numHashTables=num_hash_tables,
        bucketLength=bucket_length,
        seed=seed,
    ).fit(v)
    thr = math.sqrt(max(0.0, 2.0 - 2.0 * min_sim))
    j = model.approxSimilarityJoin(v, v, thr, distCol="d").where(
        F.col(f"datasetA.{COL_ITEM}") != F.col(f"datasetB.{COL_ITEM}")
    )
    pairs = j.select(
        F.col(f"datasetA.{COL_ITEM}").alias(NB_A), F.col(f"datasetB.{COL_ITEM}").alias(NB_B),
        (1 - F.col("d") * F.col("d") / 2).alias(NB_SIM),
        F.size(F.array_intersect(f"datasetA.{IDX}", f"datasetB.{IDX}")).cast("long").alias(NB_SUPPORT),
    ).where(F.col(NB_SIM) > min_sim)  # fmt: skip
    w = Window.partitionBy(NB_A).orderBy(F.desc(NB_SIM), F.asc(NB_B))
    return (
        pairs.withColumn("_r", F.row_number().over(w))
        .where(F.col("_r") <= max_neighbors)
        .drop("_r")
    )


# -- collaborative vectors (hybrid) ----------------------------------------------------------


def collaborative_vectors(
    ratings: DataFrame,
    source: Literal["corating", "als"] = "corating",
    rank: int = 20,
    seed: int = 42,
    base: BiasTableModel | None = None,
) -> DataFrame:
    """Unit collaborative item vectors ``(item_idx, indices, values)``, indices from 0.

    ``corating``: the item's baseline residuals ``r - (mu + b_u + b_i)`` over
    the users who rated it (so the cosine of two items is their
    baseline-centred co-rating similarity); ``als``: MLlib ALS item factors.
    """
    if source == "als":
        from pyspark.ml.recommendation import ALS as MLALS

        m = MLALS(
            rank=rank,
            maxIter=10,
            regParam=0.1,
            userCol=COL_USER,
            itemCol=COL_ITEM,
            ratingCol=COL_RATING,
            seed=seed,
        ).fit(ratings)
        long = m.itemFactors.select(
            F.col("id").alias(COL_ITEM), F.posexplode("features").alias(FEATURE, VALUE)
        )
        return from_long(
            long.select(COL_ITEM, F.col(FEATURE).cast("int"), F.col(VALUE).cast("double")),
            COL_ITEM,
            normalize=True,
        )
    if source != "corating":
        raise ValueError(f"collaborative source must be corating or als, got {source!r}")
    base = base or BiasBaseline(scale=Scale(-1e9, 1e9)).fit(ratings)
    res = base.with_prediction(ratings.select(COL_USER, COL_ITEM, COL_RATING), "_b", "_s")
    long = res.select(
        COL_ITEM, F.col(COL_USER).alias(FEATURE), (F.col(COL_RATING) - F.col("_b")).alias(VALUE)
    ).where(F.col(VALUE) != 0)
    return from_long(long, COL_ITEM, normalize=True)


def concat_vectors(
    a: DataFrame, b: DataFrame, offset: int, wa: float = 1.0, wb: float = 1.0
) -> DataFrame:
    """Unit vectors of ``[sqrt(wa) a, sqrt(wb) b]`` (``b``'s indices shifted by ``offset``); items in either."""
    la = to_long(a).withColumn(VALUE, F.col(VALUE) * math.sqrt(wa))
    lb = to_long(b).select(
        COL_ITEM,
        (F.col(FEATURE) + offset).alias(FEATURE),
        (F.col(VALUE) * math.sqrt(wb)).alias(VALUE),
    )
    return from_long(la.unionByName(lb), COL_ITEM, normalize=True)


# -- user profiles ----------------------------------------------------------------------------

Weighting = Literal["centred", "rating", "binary"]


def profile_sums(ratings: DataFrame, item_long: DataFrame) -> tuple[DataFrame, DataFrame]:
    """``(sums, counts)``: ``(user_idx, feature, s_rx, s_x)`` and ``(user_idx, n, s_r)`` of ``ratings``."""
    r = ratings.select(COL_USER, COL_ITEM, F.col(COL_RATING).cast("double").alias(COL_RATING))
    sums = (
        r.join(item_long, COL_ITEM)
        .groupBy(COL_USER, FEATURE)
        .agg(F.sum(F.col(COL_RATING) * F.col(VALUE)).alias("s_rx"), F.sum(VALUE).alias("s_x"))
    )
    counts = r.groupBy(COL_USER).agg(F.count("*").alias("n"), F.sum(COL_RATING).alias("s_r"))
    return sums, counts


def update_profile_sums(
    sums: DataFrame, counts: DataFrame, new_ratings: DataFrame, item_long: DataFrame
) -> tuple[DataFrame, DataFrame]:
    """The sums after adding ``new_ratings`` (new events for any user, known or not): touches only their rows' totals."""
    ds, dc = profile_sums(new_ratings, item_long)
    s = (
        sums.unionByName(ds)
        .groupBy(COL_USER, FEATURE)
        .agg(F.sum("s_rx").alias("s_rx"), F.sum("s_x").alias("s_x"))
    )
    c = (
        counts.unionByName(dc.select(COL_USER, F.col("n").cast("long"), "s_r"))
        .groupBy(COL_USER)
        .agg(F.sum("n").alias("n"), F.sum("s_r").alias("s_r"))
    )
    return s, c


def profile_vectors(sums: DataFrame, counts: DataFrame, weighting: Weighting = "centred", normalize: bool = True) -> DataFrame:
    """``(user_idx, indices, values)``: ``sum (r - mean_u) x`` (centred), ``sum r x`` (rating) or ``sum x`` (binary).

    A centred profile is all zeros when every rating of the user equals their
    mean (e.g. three 5-star ratings): such a user gets the binary profile
    (what they rated) instead of none.
    """
    if weighting == "centred":
        v = F.col("s_rx") - F.col("s_r") / F.col("n") * F.col("s_x")
    elif weighting == "rating":
        v = F.col("s_rx")
    elif weighting == "binary":
        v = F.col("s_x")
    else:
        raise ValueError(f"profile weighting must be centred, rating or binary, got {weighting!r}")
    eps = 1e-9
    long = sums.join(counts, COL_USER).select(COL_USER, FEATURE, v.alias(VALUE), F.col("s_x"))
    if weighting == "centred":
        flat = long.groupBy(COL_USER).agg(F.max(F.abs(VALUE)).alias("_m")).where(F.col("_m") <= eps).select(COL_USER, F.lit(True).alias("_flat"))
        long = long.join(flat, COL_USER, "left").select(COL_USER, FEATURE, F.when(F.col("_flat").isNotNull(), F.col("s_x")).otherwise(F.col(VALUE)).alias(VALUE))
    long = long.select(COL_USER, FEATURE, VALUE).where(F.abs(F.col(VALUE)) > eps)
    users = counts.select(COL_USER)
    vec = from_long(long, COL_USER, normalize=normalize)
    return users.join(vec, COL_USER, "left").select(
        COL_USER, F.coalesce(IDX, F.array().cast("array<int>")).alias(IDX), F.coalesce(VAL, F.array().cast("array<double>")).alias(VAL)
    )


SEGMENT_ATTRIBUTES = ("gender", "age", "occupation")
DEFAULT_AGE_EDGES = (18, 25, 35, 45, 56)  # the age groups MovieLens 1M asks for: under 18, 18-24, ..., 56+
SEGMENTS_SCHEMA = T.StructType(
    [
        T.StructField(COL_USER, T.IntegerType(), False),
        T.StructField(COL_SEGMENT, T.IntegerType(), False),
        T.StructField("segment_label", T.StringType(), True),
    ]
)


def user_segments(users: DataFrame, attributes: list[str], age_edges: tuple[int, ...] | list[int] = DEFAULT_AGE_EDGES) -> DataFrame:
    """``(user_idx, segment, segment_label)``: users equal in every one of ``attributes`` share a segment id 1..S.

    ``users`` is the ingested users table (USERS_SCHEMA); ``attributes`` are
    among ``gender``, ``age`` (binned at ``age_edges``: ``age < e_0`` is bin 0,
    ``e_0 <= age < e_1`` bin 1, ...) and ``occupation``.  A user with any of
    them unknown gets segment 0: the global prior.  Ids follow the sorted
    segment keys, so they are stable for a given users table.  The label
    reads like ``aged 25-34`` (``gender F, aged 25-34, occupation artist``);
    null for segment 0.
    """
    bad = sorted(set(attributes) - set(SEGMENT_ATTRIBUTES))
    if bad or not attributes:
        raise ValueError(f"segments must be a non-empty list drawn from {list(SEGMENT_ATTRIBUTES)}, got {attributes!r}")
    edges = sorted(int(e) for e in age_edges)
    age_names = [f"under {edges[0]}"] + [f"{a}-{b - 1}" for a, b in zip(edges, edges[1:], strict=False)] + [f"{edges[-1]}+"] if edges else ["any"]
    age_label = F.create_map(*[x for j, n in enumerate(age_names) for x in (F.lit(j), F.lit(f"aged {n}"))])
    parts, labels = [], []
    for a in attributes:
        if a == "age":
            age = F.col(COL_AGE)
            b = sum((F.when(age >= e, 1).otherwise(0) for e in edges), F.lit(0))
            parts.append(F.when(age.isNotNull(), F.format_string("%02d", b)))
            labels.append(age_label[b])
        elif a == "gender":
            parts.append(F.nullif(F.upper(F.trim(F.col(COL_GENDER))), F.lit("")))
            labels.append(F.concat(F.lit("gender "), parts[-1]))
        else:
            parts.append(F.nullif(F.lower(F.trim(F.col(COL_OCCUPATION))), F.lit("")))
            labels.append(F.concat(F.lit("occupation "), parts[-1]))
    unknown = F.lit(False)
    for c in parts:
        unknown = unknown | c.isNull()
    keyed = users.select(COL_USER, F.when(~unknown, F.concat_ws("|", *parts)).alias("_k"), F.when(~unknown, F.concat_ws(", ", *labels)).alias("_l"))
    # one key per segment: a few dozen at most (6 age groups x 2 genders x 21 occupations in ML-100K)
    keys = sorted(r[0] for r in keyed.where(F.col("_k").isNotNull()).select("_k").distinct().collect())
    ids = F.create_map(*[x for j, key in enumerate(keys) for x in (F.lit(key), F.lit(j + 1))]) if keys else None
    seg = F.coalesce(ids[F.col("_k")], F.lit(0)) if ids is not None else F.lit(0)
    return keyed.select(F.col(COL_USER).cast("int").alias(COL_USER), seg.cast("int").alias(COL_SEGMENT), F.col("_l").alias("segment_label"))


def segment_prior(ratings: DataFrame, segments: DataFrame | None, shrink: float) -> DataFrame:
    """``(segment, item_idx, prior)``: segment 0 is the global popularity prior ``log(1 + n_j) / log(1 + max n)``
    in [0, 1]; segment ``s > 0`` puts in ``n_j`` the segment's own count, scaled to the whole and shrunk towards
    the global shares:
    ``n_j(s) = N (n_sj + m n_j / N) / (N_s + m)`` (``N``, ``N_s`` the ratings in all and in the segment,
    ``m = shrink`` ratings' worth of the global shares), on the same ``log(1 + n) / log(1 + max n)`` scale.
    A segment without ratings (with ``m = 0``) gets the global prior."""
    n = ratings.groupBy(COL_ITEM).agg(F.count("*").alias("_n"))
    tot = n.agg(F.sum("_n").alias("_tot"), F.max("_n").alias("_m"))
    n = n.crossJoin(F.broadcast(tot))  # (item_idx, _n, _tot, _m)
    scale = F.log1p(F.greatest("_m", F.lit(1)))

    def glob(n: DataFrame) -> DataFrame:
        return n.select(F.lit(0).alias(COL_SEGMENT), COL_ITEM, (F.log1p("_n") / scale).alias("prior"))

    if segments is None:
        return glob(n)
    n = n.localCheckpoint()  # read twice below: segment 0 and every other segment's grid
    seg = segments.where(F.col(COL_SEGMENT) > 0)
    rs = ratings.select(COL_USER, COL_ITEM).join(seg, COL_USER)
    nsj = rs.groupBy(COL_SEGMENT, COL_ITEM).agg(F.count("*").alias("_seg_n"))
    ns = rs.groupBy(COL_SEGMENT).agg(F.count("*").alias("_seg_tot"))
    m = F.lit(float(shrink))
    grid = (
        seg.select(COL_SEGMENT).distinct().crossJoin(n)
        .join(nsj, [COL_SEGMENT, COL_ITEM], "left").join(ns, COL_SEGMENT, "left")
        .fillna(0, ["_seg_n", "_seg_tot"])
    )  # fmt: skip
    eff = F.when(F.col("_seg_tot") + m > 0, F.col("_tot") * (F.col("_seg_n") + m * F.col("_n") / F.col("_tot")) / (F.col("_seg_tot") + m)).otherwise(F.col("_n"))
    return glob(n).unionByName(grid.select(COL_SEGMENT, COL_ITEM, (F.log1p(eff) / scale).alias("prior")))


DAY_S = 86400


def counted_ratings(ratings: DataFrame, skip_first: int, seed: int = 42) -> DataFrame:
    """The ratings a popularity prior counts: all, or each user's without their first ``skip_first`` (by time; ties
    by a seeded hash of (user, item)).  A user's first ratings are an odd sample of what they go on to rate (sign-up
    pages show everyone the same films).  Needs ``timestamp`` when ``skip_first > 0``."""
    if skip_first <= 0:
        return ratings
    if COL_TIMESTAMP not in ratings.columns:
        raise ValueError(f"prior_skip_first={skip_first} needs the ratings' {COL_TIMESTAMP}")
    w = Window.partitionBy(COL_USER).orderBy(F.col(COL_TIMESTAMP).asc_nulls_last(), hash_uniform(seed, F.lit("first"), COL_USER, COL_ITEM), COL_ITEM)
    return ratings.withColumn("_pos", F.row_number().over(w)).where(F.col("_pos") > skip_first).drop("_pos")


def trend_prior(
    ratings: DataFrame, segments: DataFrame | None, shrink: float, trend_days: float, trend_shrink: float,
    step_days: float = 7.0, counted: DataFrame | None = None,
) -> tuple[DataFrame, DataFrame]:  # fmt: skip
    """``(prior, groups)``: a popularity prior per (segment, time) group, and ``(user_idx, segment, segment_label)``
    mapping each user to their group (``segment`` holds the group id; the label stays the demographic one).

    A user's time is their latest rating (``ratings``), cut to periods of ``step_days``; their prior counts
    the ratings of the ``trend_days`` before their period (never later ones), as shares shrunk towards the
    all-time shares by ``trend_shrink`` ratings:
    ``p_j(t) = (n_tj + m_t n_j / N) / (N_t + m_t)``, and ``n_j(t) = N p_j(t)``.  A demographic segment
    (``segments``, 0: none) multiplies that by its all-time lift, shrunk as in :func:`segment_prior`:
    ``n_j(s, t) = n_j(t) (n_sj + m p_j) / ((N_s + m) p_j)`` (``p_j = n_j / N``); the windows are too thin to
    count per segment.  All on the global ``log(1 + n) / log(1 + max n)`` scale.
    Users in ``segments`` with no rating get the latest period.  Group 0 is the all-time global prior.
    ``counted``: the ratings counted (default ``ratings``; see :func:`counted_ratings`)."""
    counted = ratings if counted is None else counted
    step = float(step_days) * DAY_S
    window = max(1, round(float(trend_days) / float(step_days)))

    def period(c: str | F.Column) -> F.Column:
        return F.floor((F.col(c) if isinstance(c, str) else c).cast("double") / step).cast("long")

    up = ratings.groupBy(COL_USER).agg(period(F.max(COL_TIMESTAMP)).alias("_b"))
    now = ratings.agg(period(F.max(COL_TIMESTAMP))).first()[0]  # one row
    if segments is not None:
        ug = up.join(segments.select(COL_USER, F.col(COL_SEGMENT).alias("_s"), "segment_label"), COL_USER, "full")
        ug = ug.select(COL_USER, F.coalesce("_s", F.lit(0)).alias("_s"), F.coalesce("_b", F.lit(now)).alias("_b"), "segment_label")
    else:
        ug = up.select(COL_USER, F.lit(0).alias("_s"), "_b", F.lit(None).cast("string").alias("segment_label"))
    ug = ug.where(F.col("_b").isNotNull()).localCheckpoint()  # users with no timestamp stay on group 0
    # one row per (segment, period) users have: hundreds (a few age groups x the weeks users' latest ratings fall in)
    pairs = sorted((int(r["_s"]), int(r["_b"])) for r in ug.select("_s", "_b").distinct().collect())
    keys = ratings.sparkSession.createDataFrame([(sg, b, j + 1) for j, (sg, b) in enumerate(pairs)], "_s int, _b long, _gid int")
    groups = ug.join(F.broadcast(keys), ["_s", "_b"]).select(
        F.col(COL_USER).cast("int").alias(COL_USER), F.col("_gid").cast("int").alias(COL_SEGMENT), "segment_label"
    )

    n = counted.groupBy(COL_ITEM).agg(F.count("*").alias("_n"))
    tot = n.agg(F.sum("_n").alias("_tot"), F.max("_n").alias("_m"))
    n = n.crossJoin(F.broadcast(tot)).localCheckpoint()  # (item_idx, _n, _tot, _m), read twice
    scale = F.log1p(F.greatest("_m", F.lit(1)))
    cjp = counted.where(F.col(COL_TIMESTAMP).isNotNull()).groupBy(COL_ITEM, period(COL_TIMESTAMP).alias("_p")).agg(F.count("*").alias("_c"))
    per = F.broadcast(keys.select("_b").distinct())
    in_window = cjp.join(per, (F.col("_p") >= F.col("_b") - window) & (F.col("_p") < F.col("_b")))
    ntj = in_window.groupBy("_b", COL_ITEM).agg(F.sum("_c").alias("_tn"))
    nt = in_window.groupBy("_b").agg(F.sum("_c").alias("_ttot"))
    grid = keys.crossJoin(n).join(ntj, ["_b", COL_ITEM], "left").join(nt, "_b", "left").fillna(0, ["_tn", "_ttot"])
    mt = F.lit(float(trend_shrink))
    p_t = F.when(F.col("_ttot") + mt > 0, (F.col("_tn") + mt * F.col("_n") / F.col("_tot")) / (F.col("_ttot") + mt)).otherwise(F.col("_n") / F.col("_tot"))
    eff = F.col("_tot") * p_t
    if segments is not None:
        rs = counted.select(COL_USER, COL_ITEM).join(segments.where(F.col(COL_SEGMENT) > 0).select(COL_USER, F.col(COL_SEGMENT).alias("_s")), COL_USER)
        nsj = rs.groupBy("_s", COL_ITEM).agg(F.count("*").alias("_seg_n"))
        ns = rs.groupBy("_s").agg(F.count("*").alias("_seg_tot"))
        grid = grid.join(nsj, ["_s", COL_ITEM], "left").join(ns, "_s", "left").fillna(0, ["_seg_n", "_seg_tot"])
        m = F.lit(float(shrink))
        p_all = F.col("_n") / F.col("_tot")
        lift = (F.col("_seg_n") + m * p_all) / ((F.col("_seg_tot") + m) * p_all)  # the segment's all-time lift
        seg_eff = F.when(F.col("_seg_tot") + m > 0, eff * lift).otherwise(eff)
        eff = F.when(F.col("_s") > 0, seg_eff).otherwise(eff)
    glob = n.select(F.lit(0).alias(COL_SEGMENT), COL_ITEM, (F.log1p("_n") / scale).alias("prior"))
    prior = glob.unionByName(grid.select(F.col("_gid").cast("int").alias(COL_SEGMENT), COL_ITEM, (F.log1p(eff) / scale).alias("prior")))
    return prior, groups


# -- the recommender -------------------------------------------------------------------------


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
        )
        known = as_topn(top, self.name)
        unknown = u.join(prof.select(COL_USER), COL_USER, "left_anti")
        if segmented:  # no profile: the segment's prior alone
            empty = unknown.join(self.segments, COL_USER, "left").select(
                COL_USER, COL_SEGMENT, F.array().cast("array<int>").alias(IDX), F.array().cast("array<double>").alias(VAL)
            )
            top = sparse_topk(empty, cand, k, self.dim, exclude=seen.join(unknown, COL_USER), prior=prior, prior_weight=1.0, left_group=group)
            return known.unionByName(as_topn(top, self.name))
        cand_prior = (
            cand.select(COL_ITEM)
            .join(prior, COL_ITEM, "left")
            .select(COL_ITEM, F.coalesce("prior", F.lit(0.0)).alias(COL_SCORE))
        )
        return known.unionByName(topk_from_item_scores(unknown, cand_prior, seen, k, self.name))

    def explain(self, recs: DataFrame, items: DataFrame, n_terms: int = 3) -> DataFrame:
        return explain(
            recs, self.ratings, self.vectors, self.vocabulary, items, self.counts, n_terms,
            segments=self.segments if self.grouped else None, lately=float(self.params.get("trend_days") or 0) > 0,
        )  # fmt: skip

    def update(self, new_ratings: DataFrame) -> ContentModel:
        """A model whose profiles include ``new_ratings`` (the sums updated, nothing recomputed); the rest is unchanged."""
        sums, counts = update_profile_sums(
            self.sums, self.counts, new_ratings, to_long(self.vectors)
        )
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
    """Content-based recommender (see the module docstring).  Needs :class:`SideData` (``side``)."""

    uses_side: ClassVar[bool] = True
    side: SideData | None = None
    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    tag_min_df: int = 2
    features: Literal["content", "hybrid"] = "content"
    collaborative: Literal["corating", "als"] = "corating"  # hybrid: the collaborative half
    collaborative_weight: float = 1.0  # hybrid: its weight against the content half (1.0)
    max_neighbors: int = 50  # content neighbours kept per item (prediction)
    neighbors: Literal["exact", "lsh"] = "exact"
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
    prior_skip_first: int = 0  # the prior leaves out each user's first ratings (by time)
    reg_user: float = 15.0
    reg_item: float = 10.0
    scale: Scale = None  # type: ignore[assignment]
    name: str = "content"

    def with_side(self, side: SideData) -> ContentBased:
        self.side = side
        return self

    def fit(self, train: DataFrame) -> ContentModel:
        self._check_train(train)
        if self.side is None:
            raise ValueError(
                f"{self.name}: content models need item side data (items, tags); none was given"
            )
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
        feats = ItemFeaturizer(weights=self.weights, tag_min_df=self.tag_min_df).fit(
            self.side.items, self.side.tags, ratings
        )
        vectors, dim = feats.vectors, feats.dim
        if self.features == "hybrid":
            collab = collaborative_vectors(
                ratings, self.collaborative, base=None if self.collaborative == "als" else base
            )
            n_collab = (
                int(
                    collab.select(
                        F.max(F.aggregate(IDX, F.lit(-1), lambda a, x: F.greatest(a, x)))
                    ).first()[0]
                    or -1
                )
                + 1
            )
            vectors = concat_vectors(vectors, collab, dim, 1.0, self.collaborative_weight)
            dim += n_collab
            vectors = vectors.localCheckpoint()  # the featurizer's vectors are already materialized
        if self.neighbors == "lsh":
            nb = lsh_content_neighbors(vectors, dim, self.max_neighbors)
        else:
            nb = content_neighbors(vectors, dim, self.max_neighbors)
        nb = nb.localCheckpoint()
        sums, counts = profile_sums(
            ratings.select(COL_USER, COL_ITEM, COL_RATING), to_long(vectors)
        )
        segments = None
        if self.segments:
            if self.side.users is None:
                log.warning("%s: segments %s asked for but no users table given: every user gets the global prior", self.name, self.segments)
            else:
                segments = user_segments(self.side.users, self.segments, self.age_edges).localCheckpoint()
                n_seg, n_global = segments.agg(
                    F.countDistinct(F.when(F.col(COL_SEGMENT) > 0, F.col(COL_SEGMENT))), F.count(F.when(F.col(COL_SEGMENT) == 0, 1))
                ).first()  # one pass over the checkpointed table
                log.info("%s: %d user segments by %s (segment 0, the global prior: %d users)", self.name, n_seg, "/".join(self.segments), n_global)
                if n_seg == 0:  # e.g. ml-latest-small: no ages; the plain global prior, as without segments
                    segments = None
        has_ts = COL_TIMESTAMP in ratings.columns and ratings.where(F.col(COL_TIMESTAMP).isNotNull()).limit(1).count() > 0
        trend = float(self.trend_days) if self.trend_days > 0 and has_ts else 0.0
        skip = int(self.prior_skip_first) if has_ts else 0
        if (self.trend_days > 0 or self.prior_skip_first > 0) and not has_ts:
            log.warning("%s: trend_days / prior_skip_first need rating timestamps, which the ratings lack: off", self.name)
        counted = counted_ratings(ratings, skip)
        if trend:
            prior, groups = trend_prior(ratings, segments, self.segment_shrink, trend, self.trend_shrink, self.trend_step_days, counted)
            log.info("%s: trend prior over %g days before each user's latest rating (%g-day periods)", self.name, trend, self.trend_step_days)
        else:
            prior, groups = segment_prior(counted, segments, self.segment_shrink), segments
        params = {
            "name": self.name, "k": self.k, "min_k": self.min_k, "damping": self.damping, "similarity": f"{self.features}_cosine",
            "weighting": self.weighting, "prior": self.prior, "dim": dim, "groups": feats.groups, "weights": feats.weights,
            "features": self.features, "segments": list(self.segments) if segments is not None else [],
            "age_edges": list(self.age_edges), "segment_shrink": self.segment_shrink,
            "trend_days": trend, "trend_shrink": self.trend_shrink, "trend_step_days": self.trend_step_days, "prior_skip_first": skip,
        }  # fmt: skip
        spark = ratings.sparkSession
        return ContentModel(
            self.name, params, vectors, feats.vocabulary, nb, ratings, base, sums.localCheckpoint(), counts.localCheckpoint(),
            prior.localCheckpoint(),
            groups.localCheckpoint() if groups is not None else spark.createDataFrame([], SEGMENTS_SCHEMA), feats.pipeline,
        )  # fmt: skip


# -- explanations, knowledge-based fallback, feature importance ------------------------------


def explain(
    recs: DataFrame,
    ratings: DataFrame,
    vectors: DataFrame,
    vocabulary: DataFrame,
    items: DataFrame,
    counts: DataFrame | None = None,
    n_terms: int = 3,
    segments: DataFrame | None = None,
    lately: bool = False,
) -> DataFrame:
    """``recs`` plus ``because_item``, ``because_rating``, ``shared`` (terms) and ``reason``.

    For a recommended item ``i`` of user ``u``: the rated item ``j`` with the
    largest ``(r_uj - mean_u) * cos(i, j)`` (the largest ``r_uj * cos`` when no
    rated item is above the mean), and the genre/tag/decade terms with the
    largest ``profile_f * x_if`` (profile over the user's ratings, mean-centred,
    positive contributions only).  Only the user's own training ratings are
    read, so a reason never names an item the user did not rate.  With
    neither, the item came from the popularity prior: "popular with users
    aged 25-34" where ``segments`` (``user_idx, segment_label``) labels the
    user, else "popular with other users"; "popular lately ..." with
    ``lately`` (a trend prior: the counts of the days before the user's time).
    """
    r = ratings.select(COL_USER, COL_ITEM, F.col(COL_RATING).cast("double").alias(COL_RATING))
    u = recs.select(COL_USER).distinct()
    mine = (
        r.join(u, COL_USER)
        .join(vectors, COL_ITEM)
        .select(COL_USER, F.col(COL_ITEM).alias("_j"), COL_RATING, IDX, VAL)
    )
    asked = recs.select(COL_USER, COL_ITEM).join(vectors, COL_ITEM, "left")
    names = {
        int(row[FEATURE]): (row["group"], row["term"])
        for row in vocabulary.where(F.col("group").isin("genres", "tags", "year")).collect()
    }
    # the vocabulary is small (terms, not items): shipped to the tasks as a dict

    def per_user(asked_pdf: pd.DataFrame, mine_pdf: pd.DataFrame) -> pd.DataFrame:
        if asked_pdf.empty:
            return pd.DataFrame(
                {COL_USER: [], COL_ITEM: [], "because_item": [], "because_rating": [], "shared": []}
            )
        uid = int(asked_pdf[COL_USER].iloc[0])
        rows = []
        if mine_pdf.empty:
            for i in asked_pdf[COL_ITEM]:
                rows.append((uid, int(i), None, None, []))
            return pd.DataFrame(
                rows, columns=[COL_USER, COL_ITEM, "because_item", "because_rating", "shared"]
            )
        rr = mine_pdf[COL_RATING].to_numpy(dtype=np.float64)
        dev = rr - rr.mean()
        M = [
            dict(
                zip(
                    np.asarray(a, dtype=np.int64).tolist(),
                    np.asarray(b, dtype=np.float64).tolist(),
                    strict=True,
                )
            )
            for a, b in zip(mine_pdf[IDX], mine_pdf[VAL], strict=True)
        ]
        prof: dict[int, float] = {}
        for d, m in zip(dev, M, strict=True):
            for f, x in m.items():
                prof[f] = prof.get(f, 0.0) + d * x
        for i, idx, val in zip(asked_pdf[COL_ITEM], asked_pdf[IDX], asked_pdf[VAL], strict=True):
            if idx is None:
                rows.append((uid, int(i), None, None, []))
                continue
            x = dict(
                zip(
                    np.asarray(idx, dtype=np.int64).tolist(),
                    np.asarray(val, dtype=np.float64).tolist(),
                    strict=True,
                )
            )
            sims = np.array([sum(v * m.get(f, 0.0) for f, v in x.items()) for m in M])
            w = dev * sims if (dev > 0).any() else rr * sims
            if (dev > 0).any():
                w = np.where(dev > 0, w, -np.inf)
            j = int(np.argmax(w))
            best = (
                (int(mine_pdf["_j"].iloc[j]), float(rr[j]))
                if np.isfinite(w[j]) and sims[j] > 0
                else (None, None)
            )
            contrib = sorted(
                (
                    (prof.get(f, 0.0) * v, f)
                    for f, v in x.items()
                    if f in names and prof.get(f, 0.0) * v > 0
                ),
                reverse=True,
            )
            terms = [names[f][1].removeprefix("decade:") for _, f in contrib[:n_terms]]
            rows.append((uid, int(i), best[0], best[1], terms))
        return pd.DataFrame(
            rows, columns=[COL_USER, COL_ITEM, "because_item", "because_rating", "shared"]
        )

    schema = f"{COL_USER} int, {COL_ITEM} int, because_item int, because_rating double, shared array<string>"
    why = asked.groupBy(COL_USER).cogroup(mine.groupBy(COL_USER)).applyInPandas(per_user, schema)
    titles = items.select(
        F.col(COL_ITEM).alias("because_item"), F.col(COL_TITLE).alias("because_title")
    )
    why = why.join(titles, "because_item", "left")
    stars = F.format_string(
        "%s", F.regexp_replace(F.format_number(F.col("because_rating"), 1), r"\.0$", "")
    )
    because = F.when(
        F.col("because_item").isNotNull(),
        F.concat(
            F.lit("because you rated "),
            F.coalesce(F.col("because_title"), F.col("because_item").cast("string")),
            F.lit(" "),
            stars,
            F.lit("★"),
        ),
    )
    shares = F.when(F.size("shared") > 0, F.concat(F.lit("shares: "), F.array_join("shared", ", ")))
    reason = F.coalesce(F.concat_ws("; ", because, shares), F.lit(""))
    pop = "popular lately with" if lately else "popular with"
    popular = F.lit(f"{pop} other users")
    if segments is not None:
        why = why.join(segments.select(COL_USER, "segment_label"), COL_USER, "left")
        popular = F.coalesce(F.concat(F.lit(f"{pop} users "), F.col("segment_label")), popular)
    reason = F.when(reason == "", popular).otherwise(reason)
    return recs.join(
        why.select(
            COL_USER,
            COL_ITEM,
            "because_item",
            "because_title",
            "because_rating",
            "shared",
            reason.alias("reason"),
        ),
        [COL_USER, COL_ITEM],
        "left",
    )


def knowledge_based(
    ratings: DataFrame,
    items: DataFrame,
    genres: list[str],
    k: int = 10,
    min_count: int = 20,
    damping: float = 10.0,
    name: str = "knowledge",
) -> DataFrame:
    """Top-``k`` for a brand-new user who picked ``genres``: ``(rank, item_idx, score, title, genres, n)``.

    Items having any picked genre, with at least ``min_count`` ratings, by the
    damped mean ``(sum r + damping * mu) / (n + damping)`` (popular *and* well
    rated); fewer than ``k`` rows only when fewer items qualify.
    """
    picked = [g.strip().lower() for g in genres if g.strip()]
    if not picked:
        raise ValueError("knowledge_based: pick at least one genre")
    known = {
        g.lower()
        for row in items.select(F.explode(COL_GENRES).alias("g")).distinct().collect()
        for g in [row["g"]]
    }
    missing = [g for g in picked if g not in known]
    if missing:
        raise ValueError(
            f"knowledge_based: unknown genre(s) {missing}; the catalogue has {sorted(known)}"
        )
    mu = ratings.agg(F.avg(COL_RATING)).first()[0]
    stats = (
        ratings.groupBy(COL_ITEM)
        .agg(F.count("*").alias("n"), F.sum(COL_RATING).alias("_s"))
        .where(F.col("n") >= min_count)
    )
    match = items.where(
        F.arrays_overlap(
            F.transform(COL_GENRES, lambda g: F.lower(g)), F.array(*[F.lit(g) for g in picked])
        )
    )
    scored = match.join(stats, COL_ITEM).select(
        COL_ITEM,
        COL_TITLE,
        COL_GENRES,
        "n",
        ((F.col("_s") + damping * mu) / (F.col("n") + damping)).alias(COL_SCORE),
    )
    w = Window.orderBy(F.desc(COL_SCORE), F.asc(COL_ITEM))
    return (
        scored.withColumn(COL_RANK, F.row_number().over(w))
        .where(F.col(COL_RANK) <= k)
        .select(COL_RANK, COL_ITEM, COL_SCORE, COL_TITLE, COL_GENRES, "n")
        .orderBy(COL_RANK)
    )


def term_signal(
    ratings: DataFrame,
    vectors: DataFrame,
    vocabulary: DataFrame,
    min_items: int = 10,
    top: int = 20,
) -> DataFrame:
    """Terms whose items are rated above or below what the bias baseline expects.

    Per term: the items having it (``items``), their ratings (``ratings``), the
    mean baseline residual of those ratings (``lift``, in stars) with its
    standard error (``se``) and ``z = lift / se``; the ``top`` terms by
    ``|z|`` among those on at least ``min_items`` items.
    """
    base = BiasBaseline(reg_user=15.0, reg_item=1e9, scale=Scale(-1e9, 1e9)).fit(
        ratings
    )  # item bias off: the term explains it
    res = base.with_prediction(ratings.select(COL_USER, COL_ITEM, COL_RATING), "_b", "_s").select(
        COL_ITEM, (F.col(COL_RATING) - F.col("_b")).alias("_e")
    )
    per_item = res.groupBy(COL_ITEM).agg(
        F.sum("_e").alias("_se"),
        F.sum(F.col("_e") * F.col("_e")).alias("_se2"),
        F.count("*").alias("_n"),
    )
    long = to_long(vectors).select(COL_ITEM, FEATURE)
    agg = (
        long.join(per_item, COL_ITEM)
        .groupBy(FEATURE)
        .agg(
            F.countDistinct(COL_ITEM).alias("items"),
            F.sum("_n").alias("ratings"),
            F.sum("_se").alias("_s"),
            F.sum("_se2").alias("_s2"),
        )
    )
    lift = F.col("_s") / F.col("ratings")
    var = F.greatest(F.col("_s2") / F.col("ratings") - lift * lift, F.lit(1e-12))
    out = agg.where(F.col("items") >= min_items).select(
        FEATURE, "items", "ratings", lift.alias("lift"), F.sqrt(var / F.col("ratings")).alias("se")
    )
    out = out.withColumn("z", F.col("lift") / F.col("se")).join(
        vocabulary.select(FEATURE, "group", "term"), FEATURE
    )
    w = Window.orderBy(F.desc(F.abs("z")), F.asc(FEATURE))
    return (
        out.withColumn("_r", F.row_number().over(w))
        .where(F.col("_r") <= top)
        .drop("_r")
        .orderBy(F.desc(F.abs("z")))
    )
