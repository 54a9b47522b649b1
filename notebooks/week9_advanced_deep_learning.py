# Databricks notebook source
# MAGIC %pip install /Volumes/main/default/wheels/recsys_spark-0.1.0-py3-none-any.whl

# COMMAND ----------

# MAGIC %md
# MAGIC # Week 9 — advanced deep learning: DeepFM over side features, sequence models, attention, time
# MAGIC
# MAGIC Runs on Databricks (parameters are widgets; the first cell installs the wheel
# MAGIC `make wheel` builds: upload it and change the path) and locally as a plain script:
# MAGIC
# MAGIC     RECSYS_DATA_DIR=../shared/datasets .venv/bin/python notebooks/week9_advanced_deep_learning.py
# MAGIC
# MAGIC (default dataset: ml-100k, which has demographics). FM and DeepFM share
# MAGIC one embedding table over fields (ids, gender, age, occupation, genres,
# MAGIC decade, tags, weekday, hour, tenure); FM is DeepFM with the deep part
# MAGIC off. Both heads: rating regression and a ranking head (ratings >= 4
# MAGIC against sampled unrated items). Then the field-pair interaction strengths,
# MAGIC a self-attentive sequence model (SASRec shape) on the next-item protocol
# MAGIC with its attention as explanation, the session mode, and accuracy by
# MAGIC history length, gap and time of day.

# COMMAND ----------

import logging

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from recsys_spark import registry, stages  # noqa: E402
from recsys_spark.evaluate import rating_report, results_markdown, topn_report  # noqa: E402
from recsys_spark.logs import setup_logging  # noqa: E402
from recsys_spark.metrics import auc_logloss  # noqa: E402
from recsys_spark.nextitem import nextitem_parts, target_context, target_metrics, temporal_breakdown  # noqa: E402
from recsys_spark.notebook import setup, show, widget  # noqa: E402
from recsys_spark.torch.fm import interactions_figure  # noqa: E402
from recsys_spark.torch.train import _pos_keys, _sample_negatives  # noqa: E402

log = setup_logging("week9_advanced_deep_learning", logging.INFO)
nb = setup("week9 advanced deep learning", default_dataset="ml-100k")
cfg, spark = nb.cfg, nb.spark
RATING_MODELS = [m for m in widget("rating_models", "bias,fm_explicit,deepfm_explicit").split(",") if m]
RANKING_MODELS = [m for m in widget("ranking_models", "popularity,fm,deepfm").split(",") if m]
SEQ_MODELS = [m for m in widget("sequence_models", "popularity,last_item,sasrec").split(",") if m]
EPOCHS = widget("epochs", "")  # "" -> each model's recsys_spark/conf/models/<name>.toml; a number caps every deep model (small runs)
SESSION_GAP = int(widget("session_gap", "3600"))  # seconds of inactivity that end a session
K = int(widget("k", "10"))

scale, train, test, side = nb.scale, nb.train, nb.test, nb.side
log.info("train %d ratings, test %d", train.count(), test.count())


def build(name, **extra):
    over = {"epochs": int(EPOCHS)} if EPOCHS and (registry.is_deep(name) or name in ("sasrec", "seq_gru")) else {}
    return registry.build(name, scale, {**over, **extra})


# COMMAND ----------

# MAGIC %md
# MAGIC ## Rating head: FM against DeepFM
# MAGIC
# MAGIC The same fields and embeddings; DeepFM adds an MLP over the
# MAGIC concatenated field vectors. RMSE on the test part.

# COMMAND ----------

fitted, rating_rows = {}, {}
for name in RATING_MODELS:
    fitted[name] = build(name).fit_with(train, side)
    rating_rows[name] = rating_report(fitted[name].predict(test.select("user_idx", "item_idx", "timestamp")), test)
show(results_markdown(rating_rows, K))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Ranking head: AUC on held-out positives, NDCG@k on the test part
# MAGIC
# MAGIC Positives: test ratings >= 4 of users and items the model knows; each
# MAGIC gets one negative, an item the user rated neither in training nor in test.

# COMMAND ----------

tr = train.select("user_idx", "item_idx").toPandas()  # bounded: the notebook's dataset
te = test.select("user_idx", "item_idx", "rating", "timestamp").toPandas()
n_items = int(tr["item_idx"].max()) + 1
pos = te[(te["rating"] >= 4) & te["user_idx"].isin(set(tr["user_idx"])) & te["item_idx"].isin(set(tr["item_idx"]))]
keys = _pos_keys(np.concatenate([tr["user_idx"], te["user_idx"]]), np.concatenate([tr["item_idx"], te["item_idx"]]), n_items)
neg = _sample_negatives(pos["user_idx"].to_numpy().astype(np.int64), n_items, keys, np.random.default_rng(42))
labelled = spark.createDataFrame(
    [(int(u), int(i), int(t), 1.0) for u, i, t in zip(pos["user_idx"], pos["item_idx"], pos["timestamp"], strict=True)]
    + [(int(u), int(i), int(t), 0.0) for u, i, t in zip(pos["user_idx"], neg, pos["timestamp"], strict=True)],
    "user_idx int, item_idx int, timestamp long, label double",
)
ranking_rows, ctr = {}, {}
n_catalog = nb.items.count()
for name in RANKING_MODELS:
    fitted[name] = build(name).fit_with(train, side)
    top = fitted[name].recommend(test.select("user_idx").distinct(), K)
    ranking_rows[name] = topn_report(top, test, train, nb.items, n_catalog, K)
    if hasattr(fitted[name], "score_udf"):  # the networks' logits
        m = fitted[name]
        known = labelled.where(F.col("item_idx") < m.n_items)
        scored = known.withColumn("s", m.score_udf()(F.col("user_idx"), F.col("item_idx"), *m._ts_args(known))).toPandas()
        ctr[name] = auc_logloss(scored["label"].to_numpy(), scored["s"].to_numpy())
show(results_markdown(ranking_rows, K))
show(ctr)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Which fields interact
# MAGIC
# MAGIC The learned strength of each field pair: the mean |<v_f, v_g>| over the
# MAGIC training ratings (the second-order term is the sum of these dot products).

# COMMAND ----------

fm_name = next((n for n in ("deepfm_explicit", "deepfm", "fm_explicit", "fm") if n in fitted), None)
interactions = None
if fm_name:
    net = fitted[fm_name].network()
    pairs = train.select("user_idx", "item_idx", "timestamp").toPandas()  # bounded: the notebook's dataset
    m = net.interactions(*(torch.from_numpy(pairs[c].fillna(-1).to_numpy().astype(np.int64)) for c in pairs.columns))
    interactions = {"fields": net.order, "strongest": sorted(
        ((round(float(m[a, b]), 5), net.order[a], net.order[b]) for a in range(len(m)) for b in range(a + 1, len(m))), reverse=True)[:8]}
    show(interactions)
    fig = interactions_figure(m, net.order, f"{fm_name} field interactions ({cfg.dataset_name})")
    nb.save_figure(fig, f"week9_{cfg.dataset_name}_interactions.png", dpi=110)
    plt.close(fig)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Next item: a sequence model on the full-ranking protocol
# MAGIC
# MAGIC Each user's latest rating is the target, everything before it is what the
# MAGIC models fit on; every unrated item is a candidate.

# COMMAND ----------

ratings = stages.read_ingested(spark, cfg).select("user_idx", "item_idx", "rating", "timestamp")
parts = nextitem_parts(ratings)
seen = parts["train"].unionByName(parts["valid"]).cache()
targets = parts["test"].cache()
per_user, next_rows, seq = {}, {}, {}
for name in SEQ_MODELS:
    seq[name] = build(name).fit_with(seen, side)
    pu = target_metrics(seq[name].recommend(targets.select("user_idx"), K), targets, K).toPandas().set_index("user_idx")
    per_user[name] = pu
    next_rows[name] = {c: round(float(pu[c].mean()), 4) for c in pu.columns}
show(next_rows)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Attention as explanation, and the session mode
# MAGIC
# MAGIC For each recommendation, the past items the model attended to most
# MAGIC ("because you recently rated ..."). In session mode the history is cut
# MAGIC where the user was inactive for more than `session_gap` seconds and the
# MAGIC model sees the current session alone.

# COMMAND ----------

explained = None
attn = next((n for n in SEQ_MODELS if n in ("sasrec", "seq_gru")), None)
if attn:
    sample = targets.select("user_idx").orderBy("user_idx").limit(3)
    explained = seq[attn].explain(sample, 3)
    show(explained.join(nb.items.select("item_idx", "title"), "item_idx").orderBy("user_idx", "rank"), 9)
    session = build(attn, session_gap=SESSION_GAP).fit_with(seen, side)
    session_lists = session.recommend(sample, 3)
    show(session_lists.orderBy("user_idx", "rank"), 9)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Temporal patterns
# MAGIC
# MAGIC NDCG@k of each model by the user's history length (deciles), the gap
# MAGIC since the previous rating, and the hour and weekday of the target (UTC).

# COMMAND ----------

temporal = temporal_breakdown(target_context(seen, targets), per_user, K)
fig, axes = plt.subplots(1, len(temporal["by"]), figsize=(4.4 * len(temporal["by"]), 3.6), squeeze=False)
for ax, (by, rows) in zip(axes[0], temporal["by"].items(), strict=True):
    for name in SEQ_MODELS:
        ax.plot(range(len(rows)), [r[name][f"ndcg@{K}"] for r in rows], marker="o", ms=3, label=name)
    ax.set_xticks(range(len(rows)), [r["segment"] for r in rows], rotation=60, ha="right", fontsize=7)
    ax.set_title(by.replace("_", " "))
axes[0][0].set_ylabel(f"NDCG@{K}")
axes[0][0].legend(fontsize=7)
fig.tight_layout()
nb.save_figure(fig, f"week9_{cfg.dataset_name}_temporal.png", dpi=110)
plt.close(fig)
show({by: [(r["segment"], r["users"]) for r in rows] for by, rows in temporal["by"].items()})
