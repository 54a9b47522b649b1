# Databricks notebook source
# MAGIC %pip install /Volumes/main/default/wheels/recsys_spark-0.1.0-py3-none-any.whl

# COMMAND ----------

# MAGIC %md
# MAGIC # Week 7 — content-based recommendations: TF-IDF features, profiles, cold start, explanations
# MAGIC
# MAGIC Runs on Databricks (parameters are widgets; the first cell installs the wheel
# MAGIC `make wheel` builds: upload it and change the path) and locally as a plain script:
# MAGIC
# MAGIC     RECSYS_DATA_DIR=../shared/datasets .venv/bin/python notebooks/week7_content_based.py
# MAGIC
# MAGIC (default dataset: ml-latest-small). It builds item vectors from genres,
# MAGIC tags, decade, popularity and recency with Spark ML, compares content
# MAGIC neighbours with collaborative ones, builds and updates user profiles,
# MAGIC scores the content model (and its hybrid with collaborative vectors) next
# MAGIC to the bias baseline and item-kNN, measures which feature groups carry the
# MAGIC signal, runs the cold-start protocols and explains recommendations.

# COMMAND ----------

import logging
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from recsys_spark import registry  # noqa: E402
from recsys_spark.coldstart import run_coldstart  # noqa: E402
from recsys_spark.content import (  # noqa: E402
    DEFAULT_WEIGHTS,
    ContentBased,
    knowledge_based,
    profile_sums,
    profile_vectors,
    term_signal,
    to_long,
    update_profile_sums,
)
from recsys_spark.evaluate import rating_report, results_markdown, topn_report  # noqa: E402
from recsys_spark.logs import setup_logging  # noqa: E402
from recsys_spark.metrics import ranking_metrics  # noqa: E402
from recsys_spark.notebook import setup, show, widget  # noqa: E402
from recsys_spark.tuning import holdout  # noqa: E402

log = setup_logging("week7_content_based", logging.INFO)
nb = setup("week7 content based", default_dataset="ml-latest-small")
cfg, spark = nb.cfg, nb.spark
MODELS = widget("models", "bias,popularity,item_knn,content,content_hybrid").split(",")
COLD_MODELS = widget("cold_models", "content,bias,popularity,item_knn").split(",")
K = int(widget("k", "10"))
GENRES = [g for g in widget("genres", "Crime,Thriller").split(",") if g]  # the knowledge-based fallback's picks
ABLATE = [g for g in widget("ablate", "genres,tags,year,popularity,recency").split(",") if g]  # feature groups dropped in turn

scale = nb.scale
side = nb.side
train = nb.train
test = nb.test
items = nb.items
log.info(
    "train %d ratings, test %d; %d items, %s tags",
    train.count(),
    test.count(),
    items.count(),
    side.tags.count() if side.tags is not None else "no",
)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Item vectors
# MAGIC
# MAGIC One `CountVectorizer` (+ `IDF` for genres and tags) per feature group,
# MAGIC each group L2-normalised and weighted, the concatenation normalised again
# MAGIC (`recsys_spark.content.ItemFeaturizer`). The fitted `PipelineModel` is
# MAGIC kept with the vectors, so a new item is featurised by the same transform.

# COMMAND ----------

t0 = time.perf_counter()
content = ContentBased(scale=scale, **registry.model_params("content")).fit(train, side=side)
log.info(
    "content model fitted in %.1fs: %d dimensions %s",
    time.perf_counter() - t0,
    content.dim,
    {g: s for g, (_, s) in content.params["groups"].items()},
)
vocab = content.vocabulary.cache()
show(vocab.where("group in ('genres', 'tags')").orderBy(F.desc("idf")).limit(10))  # the rarest terms weigh most

# COMMAND ----------

# MAGIC %md
# MAGIC ## Content neighbours against collaborative ones
# MAGIC
# MAGIC Both tables have the shape `(a, b, sim, support)`. For every item with
# MAGIC neighbours in both, the overlap of the top-10 lists says how much the two
# MAGIC notions of similarity agree.

# COMMAND ----------

knn = registry.build("item_knn", scale).fit(train)
w = "row_number() over (partition by a order by sim desc, b)"
top_c = content.neighbors.selectExpr("a", "b", f"{w} as r").where("r <= 10")
top_k = knn.neighbors.where("sim > 0").selectExpr("a", "b", f"{w} as r").where("r <= 10")
overlap = (
    top_c.join(top_k, ["a", "b"]).groupBy("a").count()
    .join(top_c.select("a").distinct().join(top_k.select("a").distinct(), "a"), "a", "right")
    .fillna(0).select((F.col("count") / 10).alias("overlap"))
)  # fmt: skip
overlap_values = [r["overlap"] for r in overlap.collect()]
mean_overlap = sum(overlap_values) / max(len(overlap_values), 1)
log.info("top-10 content vs item-kNN neighbours: mean overlap %.3f over %d items", mean_overlap, len(overlap_values))
popular = train.groupBy("item_idx").count().orderBy(F.desc("count"), "item_idx").first()["item_idx"]
named = content.neighbors.where(F.col("a") == popular).join(items.select(F.col("item_idx").alias("b"), "title"), "b").orderBy(F.desc("sim"))
show(named.select("title", "sim", "support").limit(10))
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.hist(overlap_values, bins=11, range=(0, 1.1), color="#4c72b0")
ax.set_xlabel("share of an item's top-10 content neighbours also in its item-kNN top-10")
ax.set_ylabel("items")
ax.set_title(f"{cfg.dataset_name}: content vs collaborative neighbours")
fig.tight_layout()
nb.save_figure(fig, f"week7_{cfg.dataset_name}_neighbour_overlap.png", dpi=120)
plt.close(fig)

# COMMAND ----------

# MAGIC %md
# MAGIC ## Profiles, and updating them
# MAGIC
# MAGIC A profile is kept as sums (`sum r x`, `sum x`, `n`, `sum r`), so new
# MAGIC ratings are added without recomputing; the check below compares the
# MAGIC updated profiles with profiles computed from scratch.

# COMMAND ----------

first, later = (df.cache() for df in holdout(train, 0.1, seed=7))
long = to_long(content.vectors)
s0, c0 = profile_sums(first, long)
s1, c1 = update_profile_sums(s0, c0, later, long)
sf, cf = profile_sums(train, long)
upd = profile_vectors(s1, c1).selectExpr("user_idx", "values as u_values", "indices as u_idx")
full = profile_vectors(sf, cf).selectExpr("user_idx", "values as f_values", "indices as f_idx")
diff = upd.join(full, "user_idx", "full_outer").select(
    "user_idx",
    (F.col("u_idx") == F.col("f_idx")).alias("same_idx"),
    F.aggregate(F.zip_with("u_values", "f_values", lambda a, b: F.abs(a - b)), F.lit(0.0), lambda acc, x: F.greatest(acc, x)).alias(
        "max_diff"
    ),
)
profile_check = (
    diff.agg(
        F.count("*").alias("users"),
        F.sum(F.when(~F.col("same_idx") | F.col("same_idx").isNull(), 1).otherwise(0)).alias("index_mismatch"),
        F.max("max_diff").alias("max_diff"),
    )
    .first()
    .asDict()
)
log.info("profile update vs recomputation: %s", profile_check)
assert profile_check["index_mismatch"] == 0 and (profile_check["max_diff"] or 0.0) < 1e-9

# COMMAND ----------

# MAGIC %md
# MAGIC ## Content, hybrid, bias and item-kNN on the rating and top-N protocols

# COMMAND ----------

users = test.select("user_idx").distinct().cache()
n_catalog = items.count()
rows, models = {}, {"content": content, "item_knn": knn}
for name in MODELS:
    t = time.perf_counter()
    model = models.get(name) or registry.build(name, scale).fit_with(train, side)
    rep = rating_report(model.predict(test.select("user_idx", "item_idx")), test, name == "global_mean")
    rep.update(topn_report(model.recommend(users, K), test, train, items, n_catalog, K))
    rep["seconds"] = round(time.perf_counter() - t, 1)
    rows[name], models[name] = rep, model
    log.info("%s: rmse %.4f ndcg@%d %.4f (%.1fs)", name, rep["rmse"], K, rep[f"ndcg@{K}"], rep["seconds"])
log.info("\n%s", results_markdown(rows, K))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Which features carry the signal
# MAGIC
# MAGIC Each feature group is dropped in turn (weight 0) and the model refitted on
# MAGIC 90% of the training ratings, scored on the other 10% (never on test);
# MAGIC then the terms whose items are rated furthest from the bias baseline.

# COMMAND ----------

fit_part, valid = (df.cache() for df in holdout(train, 0.1, seed=42))
valid_users = valid.select("user_idx").distinct()
weights = {**DEFAULT_WEIGHTS, **registry.model_params("content").get("weights", {})}
base_params = {k: v for k, v in registry.model_params("content").items() if k != "weights"}


def validation_scores(wts: dict) -> dict:
    m = ContentBased(scale=scale, **{**base_params, "weights": wts}).fit(fit_part, side=side)
    ndcg = ranking_metrics(m.recommend(valid_users, K), valid, K).metrics[f"ndcg@{K}"]
    rmse = rating_report(m.predict(valid.select("user_idx", "item_idx")), valid)["rmse"]
    return {"ndcg": ndcg, "rmse": rmse}


ablation = {"(all)": validation_scores(weights)}
for group in [g for g in ABLATE if g in content.params["groups"]]:
    ablation[group] = validation_scores({**weights, group: 0.0})
    log.info(
        "without %s: ndcg@%d %+.4f, rmse %+.4f",
        group,
        K,
        ablation[group]["ndcg"] - ablation["(all)"]["ndcg"],
        ablation[group]["rmse"] - ablation["(all)"]["rmse"],
    )
fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
groups = [g for g in ablation if g != "(all)"]
axes[0].barh(groups, [ablation[g]["ndcg"] - ablation["(all)"]["ndcg"] for g in groups], color="#4c72b0")
axes[0].set_xlabel(f"NDCG@{K} change when dropped")
axes[1].barh(groups, [ablation[g]["rmse"] - ablation["(all)"]["rmse"] for g in groups], color="#dd8452")
axes[1].set_xlabel("RMSE change when dropped")
fig.suptitle(f"{cfg.dataset_name}: feature-group ablation (validation)")
fig.tight_layout()
nb.save_figure(fig, f"week7_{cfg.dataset_name}_ablation.png", dpi=120)
plt.close(fig)
terms = term_signal(train, content.vectors, vocab, min_items=3, top=15).cache()
show(terms.select("group", "term", "items", "ratings", F.round("lift", 3).alias("lift"), F.round("z", 1).alias("z")))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Cold start
# MAGIC
# MAGIC New items (every rating of 10% of the items held out) and new users (10%
# MAGIC of the users keep only their first 3 ratings): `recsys-spark benchmark
# MAGIC coldstart` runs the same protocol.

# COMMAND ----------

cold = run_coldstart(spark, cfg, COLD_MODELS, K)
fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
for ax, kind in zip(axes, ("items", "users"), strict=True):
    res = cold["experiments"][kind]["models"]
    ax.bar(list(res), [m[f"ndcg@{K}"] for m in res.values()], color="#55a868")
    ax.set_title(f"new {kind}: NDCG@{K}")
    ax.tick_params(axis="x", rotation=30)
fig.tight_layout()
nb.save_figure(fig, f"week7_{cfg.dataset_name}_coldstart.png", dpi=120)
plt.close(fig)
for kind, exp in cold["experiments"].items():
    for name, m in exp["models"].items():
        log.info("new %s, %s: rmse %.4f ndcg@%d %.4f", kind, name, m["rmse"], K, m[f"ndcg@{K}"])

# COMMAND ----------

# MAGIC %md
# MAGIC ## A brand-new user, and why we recommend what we recommend
# MAGIC
# MAGIC With no ratings at all, the knowledge-based fallback serves well-rated,
# MAGIC popular items of the genres the user picks. Once a user has ratings,
# MAGIC every content recommendation carries its reason.

# COMMAND ----------

known = {r["g"].lower() for r in items.select(F.explode("genres").alias("g")).distinct().collect()}
picked = [g for g in GENRES if g.lower() in known] or sorted(known)[:1]
fallback = knowledge_based(train, items, picked, k=K, min_count=5).cache()
show(fallback)
some_user = users.orderBy("user_idx").limit(3)
explained = content.explain(content.recommend(some_user, K), items).cache()
show(explained.select("user_idx", "rank", "item_idx", F.round("score", 3).alias("score"), "reason").orderBy("user_idx", "rank"), 30)
