# Databricks notebook source
# MAGIC %pip install /Volumes/main/default/wheels/recsys_spark-0.1.0-py3-none-any.whl

# COMMAND ----------

# MAGIC %md
# MAGIC # Week 8 — deep learning: Parquet features to PyTorch, NCF and autoencoders, scored back in Spark
# MAGIC
# MAGIC Runs on Databricks (parameters are widgets; the first cell installs the wheel
# MAGIC `make wheel` builds: upload it and change the path) and locally as a plain script:
# MAGIC
# MAGIC     RECSYS_DATA_DIR=../shared/datasets .venv/bin/python notebooks/week8_deep_learning_ncf.py
# MAGIC
# MAGIC (default dataset: ml-latest-small). Spark exports the feature tables,
# MAGIC an Arrow-native `IterableDataset` streams them into PyTorch, one training
# MAGIC loop trains GMF, MLP, NeuMF, I-AutoRec and a denoising autoencoder (CDAE),
# MAGIC and `predict_batch_udf` scores them back in Spark in the same prediction
# MAGIC contract as every other model. Figures: training curves, a 2-D map of
# MAGIC item embeddings coloured by genre, nearest neighbours of well-known items,
# MAGIC the NCF paper's leave-last-out protocol and the autoencoders'
# MAGIC reconstruction quality.

# COMMAND ----------

import logging
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from recsys_spark import registry, stages  # noqa: E402
from recsys_spark.evaluate import rating_report, results_markdown, topn_report  # noqa: E402
from recsys_spark.logs import setup_logging  # noqa: E402
from recsys_spark.notebook import setup, show, widget  # noqa: E402
from recsys_spark.torch import data as td  # noqa: E402
from recsys_spark.torch.evaluate import leave_last_out, reconstruction, sampled_ranking  # noqa: E402

log = setup_logging("week8_deep_learning_ncf", logging.INFO)
nb = setup("week8 deep learning", default_dataset="ml-latest-small")
cfg, spark = nb.cfg, nb.spark
MODELS = widget("models", "popularity,item_knn,gmf,mlp,neumf,cdae").split(",")  # top-N
RATING_MODELS = [m for m in widget("rating_models", "bias,autorec,neumf_explicit").split(",") if m]
LASTOUT = [m for m in widget("lastout_models", "gmf,mlp,neumf").split(",") if m]
NEGATIVES = int(widget("negatives", "99"))  # leave-last-out: sampled unrated items per user (small catalogues need fewer)
EPOCHS = widget("epochs", "")  # "" -> each model's recsys_spark/conf/models/<name>.toml; a number caps every model (small runs)
HOLDOUT = widget("valid_fraction", "")  # "" -> the models' early-stopping holdout; 0 -> fixed epochs, no refit (small runs)
K = int(widget("k", "10"))

scale = nb.scale
train = nb.train
test = nb.test
items = nb.items
log.info("train %d ratings, test %d; %d items", train.count(), test.count(), items.count())
over = {**({"epochs": int(EPOCHS)} if EPOCHS else {}), **({"valid_fraction": float(HOLDOUT)} if HOLDOUT else {})}


def build(name):
    return registry.build(name, scale, over if name in DEEP else {})


DEEP = {"gmf", "mlp", "neumf", "neumf_explicit", "autorec", "cdae"}

# COMMAND ----------

# MAGIC %md
# MAGIC ## The feature export
# MAGIC
# MAGIC `export_features` writes interactions (per split part), seeded negatives,
# MAGIC item features (genre multi-hot, decade, top TF-IDF terms when the
# MAGIC content stage ran), user features and chronological histories, with
# MAGIC declared schemas and row groups sized for streaming, plus a metadata file.

# COMMAND ----------

export = stages.run_export(spark, cfg)
export_dir = cfg.stage_path("features", stages.split_name(cfg))
show(export["counts"])
show(spark.read.parquet(f"{export_dir}/items"), 5)
show(spark.read.parquet(f"{export_dir}/histories").select("user_idx", "length", F.slice("items", 1, 8).alias("first_items")), 5)

# COMMAND ----------

# MAGIC %md
# MAGIC ## The loader
# MAGIC
# MAGIC Row groups are the unit of work: shard `j` of `ranks x workers` streams
# MAGIC takes every row group `g` with `g mod streams = j`. Below, two "ranks"
# MAGIC read the training interactions: together they deliver every row once.

# COMMAND ----------

cols = {"user_idx": torch.int64, "item_idx": torch.int64, "rating": torch.float32}
path = f"{export_dir}/interactions/train"
shards = [td.ArrowDataset(path, cols, 512, shuffle=True, seed=1, rank=r, world_size=2) for r in range(2)]
seen_rows = [sorted(zip(*(torch.cat([b[c] for b in s]).tolist() for c in ("user_idx", "item_idx")), strict=True)) for s in shards]
loader_check = {
    "rows": td.ArrowDataset(path, cols).num_rows, "rank0": len(seen_rows[0]), "rank1": len(seen_rows[1]),
    "overlap": len(set(seen_rows[0]) & set(seen_rows[1])), "row_groups": len(td.list_units(path)),
}  # fmt: skip
show(loader_check)
t = time.perf_counter()
n = sum(len(b["rating"]) for b in td.ArrowDataset(path, cols, 1024, shuffle=True, seed=0))
log.info("arrow loader: %d rows in %.2fs (%.0f rows/s, no model)", n, time.perf_counter() - t, n / (time.perf_counter() - t))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Top-N: NCF and the denoising autoencoder next to popularity and item-kNN
# MAGIC
# MAGIC Deep models train on the training part (10% hash holdout for early
# MAGIC stopping, then a refit for the best epoch count) and score every unrated
# MAGIC training item in Spark with `predict_batch_udf`.

# COMMAND ----------

n_catalog = items.count()
users = test.select("user_idx").distinct().cache()
rows, fitted = {}, {}
for name in MODELS:
    t = time.perf_counter()
    model = build(name).fit(train)
    fit_s = time.perf_counter() - t
    top = model.recommend(users, K).cache()
    rows[name] = {**topn_report(top, test, train, items, n_catalog, K), "fit_s": round(fit_s, 1)}
    fitted[name] = model
    top.unpersist()
    log.info("%s: ndcg@%d %.4f (fit %.0fs)", name, K, rows[name][f"ndcg@{K}"], fit_s)
show(results_markdown(rows, K))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Rating prediction: I-AutoRec and explicit NeuMF

# COMMAND ----------

rating_rows = {}
for name in RATING_MODELS:
    model = build(name).fit(train)
    pred = model.predict(test.select("user_idx", "item_idx")).cache()
    rating_rows[name] = rating_report(pred, test)
    fitted[name] = model
    pred.unpersist()
show(results_markdown(rating_rows, K))
recon = {name: reconstruction(fitted[name], train) for name in ("autorec", "cdae") if name in fitted}
show(recon)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Training curves
# MAGIC
# MAGIC Training loss and the early-stopping metric per epoch (before the refit).

# COMMAND ----------

curves = {n: m.info["history"] for n, m in fitted.items() if n in DEEP}
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for name, hist in curves.items():
    ep = [h["epoch"] for h in hist]
    axes[0].plot(ep, [h["train_loss"] for h in hist], label=name)
    key = next((k for k in hist[0] if k.startswith("valid_")), None) if hist else None
    if key:
        axes[1].plot(ep, [h[key] for h in hist], label=f"{name} ({key[6:]})")
axes[0].set(title="training loss", xlabel="epoch", yscale="log")
axes[1].set(title="validation (rmse: lower; ndcg10: higher)", xlabel="epoch")
for ax in axes:
    ax.legend(fontsize=7)
fig.tight_layout()
curves_png = nb.save_figure(fig, f"week8_{cfg.dataset_name}_training_curves.png", dpi=110)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Item embeddings
# MAGIC
# MAGIC The GMF tower's item embeddings (NeuMF's when it was trained), projected
# MAGIC on their two principal components and coloured by each item's first
# MAGIC genre; and the nearest items (cosine) of the most-rated items.

# COMMAND ----------

emb_model = fitted.get("neumf") or fitted.get("gmf")
embedding, neighbours = None, None
if emb_model is not None:
    net = emb_model.network()
    tower = net.gmf if hasattr(net, "gmf") else net
    E = tower.item.weight.detach().numpy()
    counts = train.groupBy("item_idx").count()
    known = np.array(sorted(r["item_idx"] for r in counts.collect()))  # catalogue-sized: one int per item
    X = E[known] - E[known].mean(0)
    _, _, vt = np.linalg.svd(X, full_matrices=False)
    xy = X @ vt[:2].T
    meta = items.select("item_idx", "title", F.element_at("genres", 1).alias("genre")).toPandas().set_index("item_idx")
    genre = meta.reindex(known)["genre"].fillna("(none)").to_numpy()
    top_genres = [g for g, _ in sorted(((g, (genre == g).sum()) for g in set(genre)), key=lambda x: -x[1])[:8]]
    fig, ax = plt.subplots(figsize=(7, 6))
    for g in top_genres:
        m = genre == g
        ax.scatter(xy[m, 0], xy[m, 1], s=6, alpha=0.6, label=g)
    ax.set(title=f"{emb_model.name} item embeddings (PCA), by first genre", xlabel="PC1", ylabel="PC2")
    ax.legend(fontsize=7, markerscale=2)
    fig.tight_layout()
    embedding_png = nb.save_figure(fig, f"week8_{cfg.dataset_name}_item_embeddings.png", dpi=110)
    En = E[known] / np.maximum(np.linalg.norm(E[known], axis=1, keepdims=True), 1e-12)
    popular = [r["item_idx"] for r in counts.orderBy(F.desc("count"), "item_idx").limit(4).collect()]
    neighbours = []
    for it in popular:
        sims = En @ En[np.searchsorted(known, it)]
        order = [j for j in np.argsort(-sims) if known[j] != it][:5]
        neighbours.append({"item": meta.loc[it, "title"], "nearest": [meta.loc[known[j], "title"] for j in order]})
    show(neighbours)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Scoring in Spark equals scoring in PyTorch
# MAGIC
# MAGIC `predict_batch_udf` rebuilds the network from broadcast weights in each
# MAGIC Python worker; its scores match the driver's network.

# COMMAND ----------

check_model = next((fitted[n] for n in ("neumf", "gmf", "mlp", "cdae") if n in fitted), None)
score_check = None
if check_model is not None:
    sample = test.select("user_idx", "item_idx").orderBy("user_idx", "item_idx").limit(200)
    got = sample.withColumn("s", check_model.score_udf()(F.col("user_idx"), F.col("item_idx"))).toPandas()  # 200 rows
    with torch.no_grad():
        local = check_model.network().score(torch.tensor(got["user_idx"].to_numpy()), torch.tensor(got["item_idx"].to_numpy())).numpy()
    score_check = {"pairs": len(got), "max_abs_diff": float(np.abs(got["s"].to_numpy() - local).max())}
    show(score_check)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Leave-last-out with 99 sampled negatives
# MAGIC
# MAGIC The NCF paper's protocol: each user's latest rating is held out and
# MAGIC ranked against 99 items the user never rated (the `negatives` widget).

# COMMAND ----------

ratings = stages.read_ingested(spark, cfg).cache()
lo_train, lo_test = leave_last_out(ratings)
lo_train = lo_train.cache()
lastout = {}
for name in LASTOUT:
    model = build(name).fit(lo_train)
    lastout[name] = sampled_ranking(model, ratings, lo_test, negatives=NEGATIVES, k=10, seed=42)
show(results_markdown(lastout, 10))
