# Databricks notebook source
# MAGIC %pip install /Volumes/main/default/wheels/recsys_spark-0.1.0-py3-none-any.whl

# COMMAND ----------

# MAGIC %md
# MAGIC # Week 5 — neighbourhood collaborative filtering with partitioned Spark joins
# MAGIC
# MAGIC Runs on Databricks (parameters are widgets; the first cell installs the wheel
# MAGIC `make wheel` builds: upload it and change the path) and locally as a plain script:
# MAGIC
# MAGIC     RECSYS_DATA_DIR=../shared/datasets .venv/bin/python notebooks/week5_collaborative_filtering.py
# MAGIC
# MAGIC (default dataset: ml-latest-small). It computes the item-item and user-user
# MAGIC neighbour tables with both kernels (the partitioned self-join that is the
# MAGIC reference, and the entity-block scipy kernel), looks at how many pairs each
# MAGIC direction generates, fits `item_knn` and `user_knn` against the bias and
# MAGIC popularity baselines, checks LSH's recall, and shows neighbours as
# MAGIC explanations ("because you liked ...").

# COMMAND ----------

import logging
import time

from pyspark.sql import functions as F

from recsys_spark import registry
from recsys_spark.evaluate import rating_report, results_markdown, topn_report
from recsys_spark.logs import setup_logging
from recsys_spark.lsh import lsh_similarities, neighbor_recall
from recsys_spark.neighbors import similarities
from recsys_spark.notebook import setup, show, widget

log = setup_logging("week5_collaborative_filtering", logging.INFO)
nb = setup("week5 collaborative filtering", default_dataset="ml-latest-small")
cfg, spark = nb.cfg, nb.spark
MODELS = widget("models", "popularity,bias,item_knn,user_knn").split(",")
K = int(widget("k", "10"))
CAP = int(widget("cap", "200"))  # ratings per key used for pair generation

scale = nb.scale
train = nb.train
test = nb.test
log.info("train %d ratings, test %d", train.count(), test.count())

# COMMAND ----------

# MAGIC %md
# MAGIC ## How many pairs each direction generates
# MAGIC
# MAGIC Item-item similarity pairs up the items *each user* rated: the work is
# MAGIC `sum_u n_u^2 / 2`. User-user pairs up the users of *each item*:
# MAGIC `sum_i n_i^2 / 2`. Blockbuster items make the second far larger on
# MAGIC MovieLens, and heavy users dominate the first; a per-key cap bounds both
# MAGIC to `keys * cap^2 / 2`.

# COMMAND ----------


def pair_count(key: str, cap: int | None = None) -> int:
    n = F.col("count") if cap is None else F.least(F.col("count"), F.lit(cap))
    return int(train.groupBy(key).count().agg(F.sum(n * (n - 1) / 2)).first()[0] or 0)


pairs = {
    "item-item (over each user's items)": (pair_count("user_idx"), pair_count("user_idx", CAP)),
    "user-user (over each item's users)": (pair_count("item_idx"), pair_count("item_idx", CAP)),
}
for name, (full, capped) in pairs.items():
    log.info("%s: %d pairs generated, %d with cap %d", name, full, capped, CAP)

# COMMAND ----------

# MAGIC %md
# MAGIC ## The neighbour tables: join reference against the block kernel

# COMMAND ----------

tables, timings = {}, {}
for direction, user_based in (("item", False), ("user", True)):
    for kernel in ("join", "blocks"):
        t = time.perf_counter()
        table = similarities(train, similarity="pearson", user_based=user_based, shrinkage=100.0, cap=CAP, max_neighbors=50, kernel=kernel)
        table = table.cache()
        rows = table.count()
        timings[(direction, kernel)] = round(time.perf_counter() - t, 1)
        tables[(direction, kernel)] = table
        log.info("%s-%s %s kernel: %d rows in %.1fs", direction, direction, kernel, rows, timings[(direction, kernel)])
joined = tables[("item", "join")].alias("j").join(tables[("item", "blocks")].alias("k"), ["a", "b"], "full_outer")
agree = joined.agg(
    F.count("*").alias("rows"),
    F.sum(F.when(F.col("j.sim").isNull() | F.col("k.sim").isNull(), 1).otherwise(0)).alias("only_one"),
    F.max(F.abs(F.col("j.sim") - F.col("k.sim"))).alias("max_abs_diff"),
).first()
log.info("item-item kernels: %d rows, %d in one table only, max |diff| %s", agree["rows"], agree["only_one"], agree["max_abs_diff"])

# COMMAND ----------

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# bounded: a 20-bin histogram per direction reaches the driver, not the tables
fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
for i, direction in enumerate(("item", "user")):
    sims = tables[(direction, "blocks")].select(F.floor(F.col("sim") * 20).alias("bin")).groupBy("bin").count().orderBy("bin").toPandas()
    ax[i].bar(sims["bin"] / 20, sims["count"], width=0.05, align="edge")
    ax[i].set_title(f"{direction}-{direction} similarity (top 50, shrunk)")
    ax[i].set_yscale("log")
fig.tight_layout()
png = nb.save_figure(fig, f"week5_{cfg.dataset_name}_similarities.png", dpi=90)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Accuracy, fit and predict time: user- against item-based

# COMMAND ----------

items = nb.items
n_catalog = items.count()
users = test.select("user_idx").distinct()
rows = {}
for name in MODELS:
    t = time.perf_counter()
    model = registry.build(name, scale).fit(train)
    for df in model._state().values():
        df.count()
    fit_s = time.perf_counter() - t
    t = time.perf_counter()
    pred = model.predict(test.select("user_idx", "item_idx")).cache()
    pred.count()
    predict_s = time.perf_counter() - t
    rep = rating_report(pred, test, name == "global_mean")
    rep.update(topn_report(model.recommend(users, K), test, train, items, n_catalog, K))
    rep.update({"fit_s": round(fit_s, 1), "predict_s": round(predict_s, 1)})
    rows[name] = rep
    log.info("%s: fit %.1fs, predict %.1fs, fallback rows %d", name, fit_s, predict_s, rep["fallback_rows"])
log.info("\n%s", results_markdown(rows, K))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Approximate neighbours: what LSH finds of the exact top 10

# COMMAND ----------

exact = similarities(train, similarity="jaccard", kernel="blocks").cache()
recall = {}
for tables_n in (2, 8):
    approx = lsh_similarities(train, similarity="jaccard", num_hash_tables=tables_n, min_sim=0.05)
    recall[tables_n] = neighbor_recall(approx, exact, 10)
    log.info("MinHashLSH, %d hash tables: recall@10 %.3f", tables_n, recall[tables_n])

# COMMAND ----------

# MAGIC %md
# MAGIC ## Neighbours as explanations
# MAGIC
# MAGIC The most rated item's nearest neighbours: what `item_knn` would cite when
# MAGIC it recommends one of them to someone who rated it.

# COMMAND ----------

top_item = train.groupBy("item_idx").count().orderBy(F.desc("count"), "item_idx").first()["item_idx"]
titles = items.select(F.col("item_idx").alias("b"), F.col("title"))
explain = tables[("item", "blocks")].where(F.col("a") == top_item).join(titles, "b").orderBy(F.desc("sim")).limit(10)
show(items.where(F.col("item_idx") == top_item).select("title"))
show(explain.select("b", "title", "sim", "support"))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Reading the results
# MAGIC
# MAGIC * Accuracy: on ML-100K's folds item-based baseline kNN beats user-based
# MAGIC   mean-centred kNN by about 0.03 RMSE (README, "Neighbourhood CF"); both
# MAGIC   beat the bias baseline, and both beat popularity on NDCG@10.
# MAGIC * Work: item-item pairs grow with the square of user activity, user-user
# MAGIC   with the square of item popularity (the cell above measures both); the
# MAGIC   cap makes either linear in the number of keys.
# MAGIC * The block kernel gives the same table as the join (the agreement cell)
# MAGIC   and moves far fewer bytes: each pair is computed once inside a task and
# MAGIC   only a partial top-k per entity is shuffled.
