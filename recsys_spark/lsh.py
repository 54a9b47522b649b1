"""Approximate neighbours by locality-sensitive hashing, for very large catalogues.

The exact neighbour table (``neighbors.similarities``) generates every
co-rated pair; LSH instead hashes each entity's rating vector and only scores
pairs that collide in some hash table:

* ``jaccard``: ``MinHashLSH`` on the set of keys (users for item-item) each
  entity was rated by; ``sim = 1 - jaccard distance``.
* ``vector_cosine``: ``BucketedRandomProjectionLSH`` on L2-normalised rating
  vectors, where Euclidean distance ``d`` gives ``cos = 1 - d^2 / 2`` (the
  cosine of whole vectors, unrated = 0; the exact table's ``cosine`` uses
  co-rated norms instead, which no vector hash approximates).

Colliding pairs are scored exactly (Spark computes the true distance of every
candidate), so the approximation is only in which pairs are found: the
``recall`` of the exact top-k neighbours, measured by ``neighbor_recall``.
The output keeps the neighbour-table contract ``(a, b, sim, support)``, with
``support`` the co-rater count (array intersection of the two key lists) and
the same shrinkage as the exact table.
"""

from __future__ import annotations

import logging
import math

from pyspark.ml.feature import BucketedRandomProjectionLSH, MinHashLSH
from pyspark.ml.linalg import SparseVector, VectorUDT
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recsys_spark.schemas import COL_ITEM, COL_RATING, COL_USER, NB_A, NB_B, NB_SIM, NB_SUPPORT

log = logging.getLogger(__name__)

A, B, SIM, SUPPORT = NB_A, NB_B, NB_SIM, NB_SUPPORT
LSH_SIMILARITIES = ("jaccard", "vector_cosine")


@F.udf(returnType=VectorUDT())
def _sparse(dim, keys, values):  # type: ignore[no-untyped-def]  # (hints would make Spark 4 guess an Arrow UDF)
    """One call per entity (not per rating): its ratings as a SparseVector for MLlib's LSH."""
    order = sorted(range(len(keys)), key=keys.__getitem__)
    return SparseVector(dim, [keys[j] for j in order], [values[j] for j in order])


def lsh_similarities(
    ratings: DataFrame, *, similarity: str = "vector_cosine", user_based: bool = False, num_hash_tables: int = 8,
    bucket_length: float | None = None, min_sim: float = 0.05, shrinkage: float = 0.0, min_support: int = 1,
    max_neighbors: int | None = None, seed: int = 42,
) -> DataFrame:  # fmt: skip
    """Approximate neighbour table ``(a, b, sim, support)``, both directions, top ``max_neighbors`` per ``a``.

    ``min_sim`` is the join threshold (pairs less similar are never returned);
    ``bucket_length`` (vector_cosine) defaults to ``0.5 / sqrt(#keys)``, half
    a standard deviation of a random unit vector's projection: MLlib's
    ``BucketedRandomProjectionLSH`` ORs its tables (no AND of several
    projections), so wider buckets make nearly every pair collide.
    """
    if similarity not in LSH_SIMILARITIES:
        raise ValueError(f"approximate neighbours support {LSH_SIMILARITIES}, got {similarity!r}")
    key, entity = (COL_ITEM, COL_USER) if user_based else (COL_USER, COL_ITEM)
    r = ratings.select(F.col(key).alias("_k"), F.col(entity).alias("_e"), F.col(COL_RATING).cast("double").alias("_x"))
    dim = int(r.agg(F.max("_k")).first()[0] or 0) + 1
    if similarity == "jaccard":
        r = r.withColumn("_x", F.lit(1.0))
    else:  # L2-normalise each entity's vector
        r = r.join(r.groupBy("_e").agg(F.sqrt(F.sum(F.col("_x") ** 2)).alias("_norm")), "_e").withColumn(
            "_x", F.col("_x") / F.col("_norm")
        )
    vecs = (
        r.groupBy("_e")
        .agg(F.collect_list(F.struct("_k", "_x")).alias("_kv"))
        .select(
            F.col("_e").alias("id"),
            F.col("_kv._k").alias("_keys"),
            _sparse(F.lit(dim), F.col("_kv._k"), F.col("_kv._x")).alias("features"),
        )
        .cache()
    )
    if similarity == "jaccard":
        lsh = MinHashLSH(inputCol="features", outputCol="hashes", numHashTables=num_hash_tables, seed=seed)
        max_dist = 1.0 - min_sim
    else:
        bl = bucket_length if bucket_length is not None else 0.5 / math.sqrt(dim)
        lsh = BucketedRandomProjectionLSH(
            inputCol="features", outputCol="hashes", numHashTables=num_hash_tables, bucketLength=bl, seed=seed
        )
        max_dist = math.sqrt(max(0.0, 2.0 * (1.0 - min_sim)))
    model = lsh.fit(vecs)
    joined = model.approxSimilarityJoin(vecs, vecs, max_dist, distCol="_dist").where(F.col("datasetA.id") < F.col("datasetB.id"))
    sim = 1.0 - F.col("_dist") if similarity == "jaccard" else 1.0 - F.col("_dist") ** 2 / 2.0
    n = F.size(F.array_intersect("datasetA._keys", "datasetB._keys")).cast("long")
    one_way = joined.select(F.col("datasetA.id").alias(A), F.col("datasetB.id").alias(B), sim.alias(SIM), n.alias(SUPPORT))
    one_way = one_way.where(F.col(SUPPORT) >= min_support)
    if shrinkage > 0 and similarity != "jaccard":  # as the exact table: Jaccard is not shrunk
        one_way = one_way.withColumn(SIM, F.col(SIM) * (F.col(SUPPORT) - 1) / (F.col(SUPPORT) - 1 + shrinkage))
    both = one_way.unionByName(one_way.select(F.col(B).alias(A), F.col(A).alias(B), SIM, SUPPORT))
    if max_neighbors is not None:
        w = Window.partitionBy(A).orderBy(F.desc(SIM), F.asc(B))
        both = both.withColumn("_r", F.row_number().over(w)).where(F.col("_r") <= max_neighbors).drop("_r")
    return both


def neighbor_recall(approx: DataFrame, exact: DataFrame, k: int) -> float:
    """Share of each entity's exact top-``k`` neighbours (positive similarity) in its approximate top-``k``.

    Micro-averaged over all entities: ``sum |found ∩ true| / sum |true|``.
    """
    w = Window.partitionBy(A).orderBy(F.desc(SIM), F.asc(B))
    true = exact.where(F.col(SIM) > 0).withColumn("_r", F.row_number().over(w)).where(F.col("_r") <= k).select(A, B)
    found = approx.withColumn("_r", F.row_number().over(w)).where(F.col("_r") <= k).select(A, B)
    row = true.join(found.withColumn("_hit", F.lit(1)), [A, B], "left").agg(F.count("*").alias("n"), F.count("_hit").alias("hits")).first()
    return float(row["hits"]) / row["n"] if row["n"] else 1.0
