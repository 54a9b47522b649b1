# Databricks notebook source
# MAGIC %pip install /Volumes/main/default/wheels/recsys_spark-0.1.0-py3-none-any.whl

# COMMAND ----------

# MAGIC %md
# MAGIC # Week 4 — the data, and the baselines every later model must beat
# MAGIC
# MAGIC Runs on Databricks (parameters are widgets; the first cell installs the wheel
# MAGIC `make wheel` builds: upload it and change the path) and locally as a plain script:
# MAGIC
# MAGIC     RECSYS_NB_DATASET=ml-latest-small RECSYS_DATA_DIR=../shared/datasets .venv/bin/python notebooks/week4_baselines.py
# MAGIC
# MAGIC It ingests and splits the dataset with the pipeline's own stages (cached
# MAGIC under `output/`), looks at the shape of the data (long tails are why
# MAGIC popularity is a strong top-N baseline), then fits the baselines and
# MAGIC evaluates them on the ARCHITECTURE protocols.

# COMMAND ----------

import logging

from pyspark.sql import functions as F

from recsys_spark import registry, stages
from recsys_spark.evaluate import rating_report, results_markdown, topn_report
from recsys_spark.logs import setup_logging
from recsys_spark.notebook import setup, show, widget

log = setup_logging("week4_baselines", logging.INFO)
nb = setup("week4 baselines", default_dataset="generated")
cfg, spark = nb.cfg, nb.spark
MODELS = widget("models", "global_mean,user_mean,item_mean,popularity,popularity_mean,bias").split(",")
K = int(widget("k", "10"))


# COMMAND ----------

# MAGIC %md
# MAGIC ## Ingest and split (the pipeline's stages; skipped when up to date)

# COMMAND ----------

show(nb.ingest["counts"]["tables"])
ratings = nb.ratings

# COMMAND ----------

# MAGIC %md
# MAGIC ## The shape of the data: rating distribution and long tails

# COMMAND ----------

n = ratings.count()
n_users = ratings.select("user_idx").distinct().count()
n_items = ratings.select("item_idx").distinct().count()
density = n / (n_users * n_items)
log.info("%d ratings, %d users, %d items, density %.4f", n, n_users, n_items, density)
show(ratings.groupBy("rating").count().orderBy("rating"))

item_counts = ratings.groupBy("item_idx").count()
top_share = (
    item_counts.orderBy(F.desc("count")).limit(max(1, n_items // 10)).agg(F.sum("count")).first()[0] / n
)
user_q = ratings.groupBy("user_idx").count().agg(
    F.percentile_approx("count", [0.5, 0.9, 0.99]).alias("q"), F.max("count").alias("max")
).first()
log.info("the 10%% most rated items hold %.1f%% of the ratings", 100 * top_share)
log.info("ratings per user: median %d, p90 %d, p99 %d, max %d", *user_q["q"], user_q["max"])

# COMMAND ----------

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# bounded summaries reach the driver: one row per rating value, and the
# per-item counts of at most the 200,000 most rated items
hist = ratings.groupBy("rating").count().orderBy("rating").toPandas()
ranked = item_counts.orderBy(F.desc("count")).select("count").limit(200_000)
curve = ranked.toPandas()["count"].to_numpy()
fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
ax[0].bar(hist["rating"].astype(str), hist["count"])
ax[0].set_title("ratings by value")
ax[1].loglog(range(1, len(curve) + 1), curve)
ax[1].set_title("ratings per item, by popularity rank")
fig.tight_layout()
png = nb.save_figure(fig, f"week4_{cfg.dataset_name}_data.png", dpi=90)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Baselines on the validation-free protocol: rating and top-N on the test part

# COMMAND ----------

scale = stages.rating_scale(spark, cfg)
train, test = nb.train, nb.test
items = stages.read_ingested(spark, cfg, "items").cache()
n_catalog = items.count()
users = test.select("user_idx").distinct()
rows = {}
for name in MODELS:
    model = registry.build(name, scale).fit(train)
    rep = rating_report(model.predict(test.select("user_idx", "item_idx")), test, name == "global_mean")
    rep.update(topn_report(model.recommend(users, K), test, train, items, n_catalog, K))
    rows[name] = rep
table = results_markdown(rows, K)
log.info("\n%s", table)

# COMMAND ----------

# MAGIC %md
# MAGIC Reading the table: the bias baseline has the best RMSE (user and item
# MAGIC offsets explain most of what a rating deviates from the mean), while
# MAGIC count-based popularity has by far the best ranking metrics: on long-tailed
# MAGIC data the items a user will rate next are mostly popular ones. Item-mean
# MAGIC ranking is the worst: items with one 5-star rating float to the top.
# MAGIC Damping (`popularity_mean`) fixes most of that.
