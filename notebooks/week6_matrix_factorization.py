# Databricks notebook source
# MAGIC %pip install /Volumes/main/default/wheels/recsys_spark-0.1.0-py3-none-any.whl

# COMMAND ----------

# MAGIC %md
# MAGIC # Week 6 — matrix factorization: MLlib ALS / NMF and our own SVD, SVD++ and NMF on Spark
# MAGIC
# MAGIC Runs on Databricks (parameters are widgets; the first cell installs the wheel
# MAGIC `make wheel` builds: upload it and change the path) and locally as a plain script:
# MAGIC
# MAGIC     RECSYS_DATA_DIR=../shared/datasets .venv/bin/python notebooks/week6_matrix_factorization.py
# MAGIC
# MAGIC (default dataset: ml-latest-small). It fits the factorization family
# MAGIC (MLlib ALS explicit and implicit, NMF as non-negative ALS and by
# MAGIC multiplicative updates, biased SVD by SGD and by GD, SVD++ with and without
# MAGIC time-aware biases, the imputed truncated SVD) next to the bias baseline,
# MAGIC scores them on the rating and top-N protocols, compares GD, SGD and ALS on
# MAGIC one objective epoch by epoch, and reads the NMF factors as themes.

# COMMAND ----------

import logging
import time

from recsys_spark import registry, stages
from recsys_spark.evaluate import rating_report, results_markdown, topn_report
from recsys_spark.factorization.convergence import convergence, convergence_figure
from recsys_spark.factorization.interpret import factor_terms, factors_figure
from recsys_spark.logs import setup_logging
from recsys_spark.notebook import setup, show, widget
from recsys_spark.tuning import holdout

log = setup_logging("week6_matrix_factorization", logging.INFO)
nb = setup("week6 matrix factorization", default_dataset="ml-latest-small")
cfg, spark = nb.cfg, nb.spark
MODELS = widget("models", "bias,als,als_implicit,nmf,nmf_mu,svd,svd_gd,svdpp,svdpp_time,svd_impute").split(",")
K = int(widget("k", "10"))
EPOCHS = int(widget("epochs", "12"))  # convergence plot
RANK = int(widget("rank", "20"))
PARAMS = widget("params", "")  # per-model overrides, e.g. "svd:n_epochs=5;nmf_mu:n_epochs=10"

scale = nb.scale
train = nb.train
fit_part, valid = (df.cache() for df in holdout(train, 0.1, seed=42))  # the convergence curves' validation part
test = nb.test
items = nb.items
log.info("train %d ratings (%d held out for the convergence curves), test %d", train.count(), valid.count(), test.count())


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def overrides(name: str) -> dict:
    """``PARAMS`` entries for ``name``: ``model:key=value`` separated by ``;``."""
    out = {}
    for part in filter(None, PARAMS.split(";")):
        model, _, kv = part.partition(":")
        key, _, value = kv.partition("=")
        if model == name:
            out[key] = _value(value)
    return out


# COMMAND ----------

# MAGIC %md
# MAGIC ## The family, on the rating and top-N protocols
# MAGIC
# MAGIC Every model starts from its tuned configuration in `recsys_spark/conf/models/<name>.toml`
# MAGIC (tuned with `recsys-spark tune` on a slice of ML-100K's `u1.base`, never on
# MAGIC a test part). Rating predictions are clipped to the scale and every test
# MAGIC row is scored (`source` counts the fallbacks); top-N lists exclude the
# MAGIC user's training items. `als_implicit` ranks by preference and does not
# MAGIC predict ratings: its RMSE is the bias baseline's.

# COMMAND ----------

users = test.select("user_idx").distinct().cache()
n_catalog = items.count()
rows, models = {}, {}
for name in MODELS:
    t = time.perf_counter()
    model = registry.build(name, scale, overrides(name)).fit(train)
    pred = model.predict(test.select("user_idx", "item_idx", "timestamp"))
    rep = rating_report(pred, test, name == "global_mean")
    rep.update(topn_report(model.recommend(users, K), test, train, items, n_catalog, K))
    rep["seconds"] = round(time.perf_counter() - t, 1)
    rows[name], models[name] = rep, model
    log.info("%s: rmse %.4f ndcg@%d %.4f (%.1fs)", name, rep["rmse"], K, rep[f"ndcg@{K}"], rep["seconds"])
log.info("\n%s", results_markdown(rows, K))

# COMMAND ----------

# MAGIC %md
# MAGIC ## Time-aware biases on top of SVD++
# MAGIC
# MAGIC `svdpp_time` adds an item bias per time bin and a per-user drift
# MAGIC `alpha_u * sign(t - t_u) |t - t_u|^0.4` (Koren 2009). The difference below
# MAGIC is test RMSE with minus without.

# COMMAND ----------

time_gain = None
if "svdpp" in rows and "svdpp_time" in rows:
    time_gain = rows["svdpp_time"]["rmse"] - rows["svdpp"]["rmse"]
    log.info("time-aware biases change SVD++ test RMSE by %+.4f", time_gain)

# COMMAND ----------

# MAGIC %md
# MAGIC ## GD, SGD and ALS on the same objective
# MAGIC
# MAGIC The unbiased objective MLlib's ALS minimises (ALS-WR weighting), the same
# MAGIC rank and regularization for the three. ALS solves each side exactly per
# MAGIC sweep; SGD takes many small noisy steps per epoch; GD one (preconditioned,
# MAGIC momentum) step per epoch.

# COMMAND ----------

curves = convergence(fit_part, valid, rank=RANK, reg=0.05, epochs=EPOCHS)
conv_fig = convergence_figure(curves, f"{cfg.dataset_name}: rank {RANK}, reg 0.05")
conv_png = nb.save_figure(conv_fig, f"week6_{cfg.dataset_name}_convergence.png", dpi=100)
for name, c in curves.items():
    log.info("%s: valid RMSE by epoch %s", name, [round(r["valid_rmse"], 4) for r in c])

# COMMAND ----------

# MAGIC %md
# MAGIC ## What the NMF factors mean
# MAGIC
# MAGIC With non-negative factors an item's loading says how much of the theme
# MAGIC it carries. For each factor: the titles that load most, and the genres
# MAGIC (and tags, where the dataset has them) whose items load most relative to
# MAGIC the factor's average (lift).

# COMMAND ----------

nmf_name = next((n for n in ("nmf", "nmf_mu") if n in models), None)
interp = None
if nmf_name:
    tags = stages.read_ingested(spark, cfg, "tags") if "ml-latest" in cfg.dataset_name else None
    interp = factor_terms(models[nmf_name].item_factors, items, tags, top=5, min_items=3).cache()
    show(interp.where("kind = 'genre' and rank <= 3").orderBy("factor", "rank"), 60)
    factors_fig = factors_figure(interp, f"{nmf_name} factors on {cfg.dataset_name}")
    nb.save_figure(factors_fig, f"week6_{cfg.dataset_name}_nmf_factors.png", dpi=110)
