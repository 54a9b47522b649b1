# Databricks notebook source
# MAGIC %pip install /Volumes/main/default/wheels/recsys_spark-0.1.0-py3-none-any.whl

# COMMAND ----------

# MAGIC %md
# MAGIC # Week 10 — ensembles, hybrids and the choice: one blended, explained recommender
# MAGIC
# MAGIC Runs on Databricks (parameters are widgets; the first cell installs the wheel
# MAGIC `make wheel` builds: upload it and change the path) and locally as a plain script:
# MAGIC
# MAGIC     RECSYS_DATA_DIR=../shared/datasets .venv/bin/python notebooks/week10_hybrid_models.py
# MAGIC
# MAGIC (default dataset: ml-latest-small). Every member is fitted on the training
# MAGIC part and predicts a validation part carved from it; the blend stage learns
# MAGIC on those predictions only (rating ensembles, a switching hybrid, top-N rank
# MAGIC fusion), chooses by cross-validation over validation users, and the final
# MAGIC job refits the chosen members on every rating and explains each
# MAGIC recommendation. The test part is read once, for the table at the end.

# COMMAND ----------

import dataclasses
import json
import logging

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from recsys_spark import blend as bl  # noqa: E402
from recsys_spark import stages  # noqa: E402
from recsys_spark.logs import setup_logging  # noqa: E402
from recsys_spark.notebook import setup, show, widget  # noqa: E402
from recsys_spark.stages import final as final_stage  # noqa: E402

log = setup_logging("week10_hybrid_models", logging.INFO)
nb = setup("week10 hybrid models", default_dataset="ml-latest-small")
spark = nb.spark
MODELS = widget("models", "popularity,bias,item_knn,als,als_implicit,content").split(",")
K = int(widget("k", "10"))
VALID = float(widget("valid_ratio", "0.1"))  # of each user's training ratings: what the blend learns on

# the blend needs a validation part and the members named in the config
cfg = dataclasses.replace(
    nb.cfg,
    split=dataclasses.replace(nb.cfg.split, valid_ratio=VALID or nb.cfg.split.valid_ratio),
    models=dataclasses.replace(nb.cfg.models, names=MODELS, k=K),
    evaluate=dataclasses.replace(nb.cfg.evaluate, k=K, select_metric=f"ndcg@{K}"),
)
stages.run_split(spark, cfg)
log.info("members: %s; validation part: %.0f%% of each user's training ratings", MODELS, 100 * cfg.split.valid_ratio)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Level 1: every member predicts the validation part
# MAGIC
# MAGIC Each member is fitted on train and predicts valid (the blender's
# MAGIC training data), then refitted on train + valid to predict test.

# COMMAND ----------

for name in MODELS:
    stages.run_predict(spark, cfg, name)
blend = stages.run_blend(spark, cfg)["counts"]
level1 = spark.read.parquet(cfg.stage_path("blend", "level1", "valid"))
show(level1.select("user_idx", "item_idx", "rating", *[c for c in level1.columns if c.startswith("p_")], *bl.CONTEXT).limit(10))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Rating ensembles and the switching hybrid
# MAGIC
# MAGIC Cross-validated RMSE over validation users of every method and of every
# MAGIC single member; the lowest is refit on all of valid and applied to test.

# COMMAND ----------

cv = blend["ratings"]["cv_rmse"]
order = sorted(cv, key=cv.get)
fig, ax = plt.subplots(figsize=(8, 3.5))
ax.barh(order, [cv[m] for m in order], color=["#c44e52" if m == blend["ratings"]["chosen"] else "#4c72b0" for m in order])
ax.invert_yaxis()
ax.set_xlabel("cross-validated RMSE on the validation part")
ax.set_xlim(min(cv.values()) * 0.98, max(cv.values()) * 1.01)
fig.tight_layout()
nb.save_figure(fig, f"week10_{cfg.dataset_name}_rating_methods.png", dpi=120)
plt.close(fig)
log.info("rating blend chosen on valid: %s (%s)", blend["ratings"]["chosen"], {m: round(cv[m], 4) for m in order})

# COMMAND ----------

# MAGIC %md
# MAGIC ## Weights by user segment, and where the switch sends each row
# MAGIC
# MAGIC The `segment` blend learns non-negative weights per user-activity
# MAGIC quartile; the switch routes each row to a chain of members.

# COMMAND ----------

frame = bl.sample_users(level1, cfg.blend.max_rows).toPandas()  # bounded by blend.max_rows
members = [c[2:] for c in level1.columns if c.startswith("p_")]  # the members that predict ratings
seg = bl.fit_rating_blend("segment", frame, members)
switch = bl.fit_rating_blend("switch", frame, members)
fig, ax = plt.subplots(figsize=(8, 3.5))
width = 0.8 / len(members)
for i, m in enumerate(members):
    ax.bar([s + i * width for s in range(len(seg.seg_weights))], [w[1 + i] for w in seg.seg_weights], width, label=m)
ax.set_xticks([s + 0.4 - width / 2 for s in range(len(seg.seg_weights))])
ax.set_xticklabels(["lightest", "2nd", "3rd", "heaviest"][: len(seg.seg_weights)])
ax.set_xlabel("user activity quartile")
ax.set_ylabel("NNLS weight")
ax.legend(fontsize=7)
fig.tight_layout()
nb.save_figure(fig, f"week10_{cfg.dataset_name}_segment_weights.png", dpi=120)
plt.close(fig)
routes = spark.createDataFrame(frame).select(switch.source_col().alias("source")).groupBy("source").count()
show(routes.orderBy(F.desc("count")))
log.info("switch chains: %s", {bl.ROUTES[r]: [members[m] for m in c] for r, c in enumerate(switch.chains)})

# COMMAND ----------

# MAGIC %md
# MAGIC ## Top-N: rank fusion, members chosen by greedy forward selection on validation NDCG

# COMMAND ----------

topn = blend["topn"]
fig, ax = plt.subplots(figsize=(8, 3.5))
names = list(topn["singles"]) + [f"{m}({len(v['members'])})" for m, v in topn.get("methods", {}).items()]
values = list(topn["singles"].values()) + [v["ndcg"] for v in topn.get("methods", {}).values()]
ax.bar(names, values, color="#55a868")
ax.set_ylabel(f"validation NDCG@{K}")
ax.tick_params(axis="x", rotation=30)
fig.tight_layout()
nb.save_figure(fig, f"week10_{cfg.dataset_name}_topn_methods.png", dpi=120)
plt.close(fig)
log.info("top-N chosen on valid: %s", topn["chosen"])

# COMMAND ----------

# MAGIC %md
# MAGIC ## The test part, once: every member and the blend

# COMMAND ----------

results = stages.run_evaluate(spark, cfg)["counts"]["models"]
table = {m: {"rmse": round(r["rmse"], 4), f"ndcg@{K}": round(r[f"ndcg@{K}"], 4)} for m, r in results.items()}
log.info("test part:\n%s", json.dumps(table, indent=1))

# COMMAND ----------

# MAGIC %md
# MAGIC ## The final recommender: the chosen blend refit on every rating, explained

# COMMAND ----------

final = stages.run_final(spark, cfg)["counts"]
recs = final_stage.read_final(spark, cfg)
show(recs.where(F.col("user_idx") < 3).orderBy("user_idx", "rank").select("user_id", "rank", "title", "explanation"), 30)
log.info("final: %s", {k: final[k] for k in ("fit", "fit_rows", "method", "members", "users_written", "cold_start_users")})
