"""Item features: documents from genres, tags, year, popularity and recency; the fitted featurizer."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pyspark import StorageLevel
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.feature import IDF, CountVectorizer, ElementwiseProduct, Normalizer, VectorAssembler
from pyspark.ml.linalg import SparseVector, Vectors
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys_spark import lineage
from recsys_spark.io import fs
from recsys_spark.recommender import (
    PARAMS_FILE,
)
from recsys_spark.schemas import (
    COL_GENRES,
    COL_ITEM,
    COL_TAG,
    COL_TIMESTAMP,
    COL_YEAR,
    require_columns,
)

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
        vectors = vectors_from(pipeline.transform(docs)).transform(lineage.cut)  # materialized while docs is cached
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

