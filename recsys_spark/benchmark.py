"""``recsys-spark benchmark``: the fixed evaluation protocols, for any registered model.

    recsys-spark benchmark rating --dataset ml-100k --folds 1-5 --models bias,item_mean --out r.json
    recsys-spark benchmark topn --dataset ml-100k --models popularity --k 10 --out t.json
    recsys-spark benchmark coldstart --dataset ml-latest-small --models content,bias,popularity

* **rating**: MovieLens 100K canonical folds ``u1..u5`` (another dataset:
  one per-user stratified 75/25 split with seed 42, the top-N protocol's);
  every test row is scored (fallbacks counted by ``source``, never dropped);
  RMSE and MAE per fold and their mean.
* **topn**: per-user stratified 75/25 split with seed 42; candidates are all
  training items the user has not rated; every test item of the user is
  relevant; Precision/Recall/NDCG/MAP/HR/MRR@k, catalogue coverage, novelty
  and intra-list diversity (over genres).
* **coldstart**: new items (all their ratings held out) and new users (three
  training ratings each); see :mod:`recsys_spark.coldstart`.

Blends: ``--models als,svdpp,item_knn,blend:ridge`` adds ensembles of the
listed models beside them.  **rating**: on each fold a validation part (10%
of each user's training ratings, seeded) is carved from ``u<k>.base``; the
members fitted on the rest predict it, and the blender learns only from those
predictions; it is applied to the members fitted on the whole ``u<k>.base``
(the singles' own test predictions).  ``blend:auto`` picks the method with
the lowest cross-validated RMSE on the validation part (as the blend stage
does).  **topn**: ``blend:rrf`` / ``blend:borda`` fuse the members' lists
(no learning).  Each blend carries the paired difference against the best
single member with a bootstrap 95% interval over users
(:func:`recsys_spark.metrics.paired_rmse_bootstrap`, ``paired_bootstrap``).

Datasets resolve under ``RECSYS_DATA_DIR``; ingest and split outputs are
cached under ``paths.output`` like the pipeline's (a second run skips them).
Times: ``fit_s`` fits and materializes the learned state, ``predict_s``
computes and materializes the predictions (or top-N lists); both in seconds.
With them, throughput and the peak memory sampled while the model fitted and
predicted (:class:`recsys_spark.costs.CostMeter`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import blend as bl
from recsys_spark import metrics as M
from recsys_spark import registry, stages
from recsys_spark.config import Config, SplitConfig, load_config
from recsys_spark.content import SideData
from recsys_spark.costs import MB, CostMeter, dir_bytes, throughput
from recsys_spark.evaluate import rating_report, topn_report
from recsys_spark.io import fs
from recsys_spark.recommender import RecommenderModel, Scale, materialize, release
from recsys_spark.schemas import COL_ITEM, COL_PREDICTION, COL_RATING, COL_SOURCE, COL_USER
from recsys_spark.split import TEST, stratified_split

log = logging.getLogger(__name__)

TOPN_PROTOCOL = {"split": "stratified", "ratio": 0.75, "seed": 42, "candidates": "unrated training items"}
BLEND = "blend:"
BLEND_VALID = {"share": 0.1, "seed": 7, "how": "per-user stratified share of each fold's training part"}


def split_models(models: list[str], protocol: str) -> tuple[list[str], list[str]]:
    """``(singles, blend methods)`` of a ``--models`` list; a blend needs two members and a known method."""
    singles = [m for m in models if not m.startswith(BLEND)]
    blends = [m[len(BLEND):] for m in models if m.startswith(BLEND)]
    allowed = {"rating": (*bl.RATING_METHODS, "auto"), "topn": bl.TOPN_METHODS}.get(protocol, ())
    for b in blends:
        if b not in allowed:
            raise ValueError(f"blend:{b}: the {protocol} protocol blends with one of {', '.join(allowed) or 'none'}")
    if blends and len(singles) < 2:
        raise ValueError(f"a blend needs at least two member models in --models, got {singles}")
    return singles, blends


def dataset_overrides(name: str) -> list[str]:
    """``--dataset`` name -> config overrides (kind and folder name)."""
    if name == "generated":
        return ["dataset.kind=generated"]
    if name in ("ml-100k", "ml-1m", "generic"):
        return [f"dataset.kind={name}"]  # generic: the table's settings come from the config file
    if name.startswith("ml-latest") or name in ("ml-25m", "ml-32m", "ml-20m"):
        return ["dataset.kind=ml-latest", f"dataset.name={name}"]
    raise ValueError(f"unknown dataset {name!r}: use ml-100k, ml-1m, ml-latest-small, ml-25m, ml-32m, generated or generic")


def parse_folds(text: str) -> list[int]:
    folds: list[int] = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-", 1)
            folds.extend(range(int(a), int(b) + 1))
        else:
            folds.append(int(part))
    if not folds or any(f < 1 or f > 5 for f in folds):
        raise ValueError(f"--folds must name folds 1..5, got {text!r}")
    return folds


def _timed_fit(
    name: str, cfg_scale: Scale, train: DataFrame, side: SideData | None = None, models_dir: str | None = None,
) -> tuple[RecommenderModel, float]:  # fmt: skip
    est = registry.build(name, cfg_scale, models_dir=models_dir)
    t = time.perf_counter()
    model = materialize(est.fit_with(train, side))
    return model, time.perf_counter() - t


def _with_split(cfg: Config, split: SplitConfig) -> Config:
    """The protocol pins the split, whatever the config says."""
    return dataclasses.replace(cfg, split=split)


def _mean(values: list[float]) -> float:
    return statistics.fmean(values)


RATING_SPLIT = {"split": "stratified", "ratio": 0.75, "seed": 42}  # a dataset without canonical folds: the top-N protocol's split


def _part(spark: SparkSession, cfg: Config, part: str, fold: int) -> DataFrame:
    """A fold's part (``fold`` 0: the one split of a dataset without canonical folds)."""
    return stages.read_split(spark, cfg, part, fold=fold or None)


def _fold_label(fold: int) -> str:
    return f"u{fold}" if fold else "s42"


def run_rating(
    spark: SparkSession, cfg: Config, models: list[str], folds: list[int], errors: dict[str, pd.DataFrame] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The rating protocol: ML-100K's canonical folds; another dataset, one per-user stratified
    75/25 split with seed 42 (:data:`RATING_SPLIT`).  With ``errors`` (a dict), each model's
    per-rating errors go into it: a pandas frame ``(fold, user_idx, item_idx, err)`` of every test
    rating, sorted (for paired tests; bounded by the test part)."""
    models, blends = split_models(models, "rating")
    if cfg.dataset.kind == "ml-100k":
        # the split always holds all five folds (so a one-fold run does not invalidate it)
        cfg = _with_split(cfg, SplitConfig(protocol="ml100k_folds"))
    else:
        if folds != [1, 2, 3, 4, 5]:
            raise ValueError(f"--folds names ML-100K's canonical folds; {cfg.dataset_name} has one split (stratified 75/25, seed 42)")
        cfg = _with_split(cfg, SplitConfig(protocol="stratified", ratio=0.75, seed=42, valid_ratio=0.0, n_negatives=0))
        folds = [0]
    stages.run_ingest(spark, cfg)
    stages.run_split(spark, cfg)
    scale = stages.rating_scale(spark, cfg)
    side = stages.side_data(spark, cfg)
    out: dict[str, Any] = {
        "protocol": {"name": "rating", "dataset": cfg.dataset_name, "folds": [_fold_label(k) for k in folds], "scale": [scale.lo, scale.hi],
                     **({} if cfg.dataset.kind == "ml-100k" else RATING_SPLIT)},
        "models": {},
    }  # fmt: skip
    kept: dict[int, dict[str, pd.DataFrame]] = {k: {} for k in folds}  # the members' test predictions, for the blends
    for name in models:
        per_fold = []
        errs = []
        for k in folds:
            train = _part(spark, cfg, "train", k).persist()
            test = _part(spark, cfg, "test", k).persist()
            with CostMeter(spark) as meter:
                with meter.phase("fit"):
                    model = materialize(registry.build(name, scale, models_dir=stages.models_dir_of(cfg)).fit_with(train, side))
                with meter.phase("predict"):
                    # the timestamp travels with the pairs: time-aware models use it, the others ignore it
                    pred = model.predict(test.select(*[c for c in ("user_idx", "item_idx", "timestamp") if c in test.columns])).persist()
                    pred.count()
            cost = meter.result()
            m = rating_report(pred, test, primary_is_fallback=name == "global_mean")
            if blends:  # bounded: one fold's test rows
                kept[k][name] = pred.select(COL_USER, COL_ITEM, COL_PREDICTION, COL_SOURCE).toPandas()
            if errors is not None:  # bounded: one fold's test rows
                e = pred.join(test.select(COL_USER, COL_ITEM, COL_RATING), [COL_USER, COL_ITEM])
                e = e.select(F.lit(k).alias("fold"), COL_USER, COL_ITEM, (F.col(COL_PREDICTION) - F.col(COL_RATING)).alias("err"))
                errs.append(e.toPandas())
            per_fold.append({"fold": _fold_label(k), **m, **cost, **throughput(cost, int(m["rows"]), 0)})
            log.info("%s %s: rmse %.4f mae %.4f (fit %.1fs, predict %.1fs)", name, _fold_label(k), m["rmse"], m["mae"],
                     cost["fit_s"], cost["predict_s"])  # fmt: skip
            release(model)
            for df in (pred, train, test):
                df.unpersist()
        if errors is not None:
            errors[name] = pd.concat(errs).sort_values(["fold", COL_USER, COL_ITEM]).reset_index(drop=True)
        out["models"][name] = {
            "rmse": _mean([f["rmse"] for f in per_fold]),
            "mae": _mean([f["mae"] for f in per_fold]),
            **{key: round(_mean([f[key] for f in per_fold]), 3) for key in ("fit_s", "predict_s", "predict_rows_per_s")},
            **{key: max(f[key] for f in per_fold) for key in per_fold[0] if key.startswith("peak_")},
            "fallback_rows": sum(f["fallback_rows"] for f in per_fold),
            "rows": sum(f["rows"] for f in per_fold),
            "folds": per_fold,
        }
    if blends:
        out["protocol"]["blend_validation"] = BLEND_VALID
        out["models"].update(_rating_blends(spark, cfg, models, blends, folds, kept, scale, side, out["models"]))
    return out


def _rating_blends(
    spark: SparkSession, cfg: Config, members: list[str], methods: list[str], folds: list[int],
    kept: dict[int, dict[str, pd.DataFrame]], scale: Scale, side: SideData, singles: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """Each blend method on each fold: learned on the carved validation part, applied to the members' test predictions."""
    best = min(members, key=lambda m: (singles[m]["rmse"], m))
    per: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    pooled: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    for k in folds:
        train = _part(spark, cfg, "train", k)
        test = _part(spark, cfg, "test", k)
        parts = stratified_split(train, 1 - BLEND_VALID["share"], BLEND_VALID["seed"]).persist()
        fit_part = parts.where(F.col("part") != TEST).drop("part").persist()
        valid = parts.where(F.col("part") == TEST).drop("part").persist()
        member_s = 0.0
        vpreds = {}
        for name in members:  # fitted on train minus valid: the blender never sees a label they trained on
            model, fit_s = _timed_fit(name, scale, fit_part, side, stages.models_dir_of(cfg))
            cols = [c for c in ("user_idx", "item_idx", "timestamp") if c in valid.columns]
            vpreds[name] = model.predict(valid.select(*cols)).persist()
            vpreds[name].count()
            release(model)  # its predictions are cached: the next member needs the memory
            member_s += fit_s
        l1v, miss_v = bl.fill_missing(bl.level1(vpreds, valid, fit_part), members, "valid", _avg(fit_part))
        frame_v = l1v.toPandas()  # bounded: a tenth of a fold's training rows
        tpreds = {n: spark.createDataFrame(kept[k][n]) for n in members}
        l1t, miss_t = bl.fill_missing(bl.level1(tpreds, test, train), members, "test", _avg(train))
        frame_t = l1t.toPandas()  # bounded: the fold's test rows
        y = frame_t[COL_RATING].to_numpy(np.float64)
        err_best = np.clip(frame_t[bl._p(best)].to_numpy(np.float64), scale.lo, scale.hi) - y
        for method in methods:
            t = time.perf_counter()
            chosen, cv = method, {}
            if method == "auto":
                cv = {m: bl.cv_rmse(m, frame_v, members, 5, scale.lo, scale.hi) for m in bl.RATING_METHODS}
                chosen = min(cv, key=lambda m: (cv[m], m))
            blend = bl.fit_rating_blend(chosen, frame_v, members)
            fit_s = time.perf_counter() - t
            t = time.perf_counter()
            err = np.clip(blend.predict_np(frame_t), scale.lo, scale.hi) - y
            predict_s = time.perf_counter() - t
            paired = M.paired_rmse_bootstrap(frame_t[COL_USER].to_numpy(), err, err_best)
            row = {
                "fold": _fold_label(k), "rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err))),
                "method": chosen, "fit_s": round(fit_s, 3), "predict_s": round(predict_s, 3),
                "members_fit_s": round(member_s, 3), "valid_rows": len(frame_v), "rows": len(frame_t),
                "missing": {"valid": miss_v["missing"], "test": miss_t["missing"]},
                f"paired_rmse_vs_{best}": paired, "blend": blend.to_dict(), **({"cv_rmse": cv} if cv else {}),
            }  # fmt: skip
            per[method].append(row)
            pooled[method].append(np.column_stack([k * 100_000 + frame_t[COL_USER].to_numpy(), err, err_best]))
            log.info("blend:%s u%d: rmse %.4f (%s; best single %s %.4f; diff %+.4f, 95%% CI %+.4f..%+.4f)", method, k, row["rmse"],
                     chosen, best, float(np.sqrt(np.mean(err_best**2))), paired["diff"], paired["ci95_lo"], paired["ci95_hi"])  # fmt: skip
        for df in (*vpreds.values(), parts, fit_part, valid):
            df.unpersist()
    out = {}
    for method in methods:
        rows = per[method]
        allrows = np.vstack(pooled[method])
        out[f"{BLEND}{method}"] = {
            "rmse": _mean([f["rmse"] for f in rows]), "mae": _mean([f["mae"] for f in rows]),
            "fit_s": round(_mean([f["fit_s"] for f in rows]), 3), "predict_s": round(_mean([f["predict_s"] for f in rows]), 3),
            "members_fit_s": round(_mean([f["members_fit_s"] for f in rows]), 3),
            "fallback_rows": 0, "rows": sum(f["rows"] for f in rows), "members": members, "best_single": best,
            "better_than_best_single_on_every_fold": all(f[f"paired_rmse_vs_{best}"]["diff"] > 0 for f in rows),
            f"paired_rmse_vs_{best}": M.paired_rmse_bootstrap(allrows[:, 0], allrows[:, 1], allrows[:, 2]),
            "folds": rows,
        }  # fmt: skip
    return out


def _avg(df: DataFrame) -> float:
    return float(df.agg(F.avg(COL_RATING)).first()[0] or 0.0)  # a scalar


def run_topn(
    spark: SparkSession, cfg: Config, models: list[str], k: int, per_user: dict[str, Any] | None = None,
    save_dir: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """The top-N protocol; with ``per_user`` (a dict), each model's per-user metrics go into it as
    a pandas frame indexed by user (for paired comparisons).  With ``save_dir``, each fitted model
    is saved there (then deleted) for its size on disk (``model_mb``)."""
    models, blends = split_models(models, "topn")
    if blends and per_user is None:
        per_user = {}
    cfg = _with_split(cfg, SplitConfig(protocol="stratified", ratio=0.75, seed=42, valid_ratio=0.0, n_negatives=0))
    stages.run_ingest(spark, cfg)
    stages.run_split(spark, cfg)
    scale = stages.rating_scale(spark, cfg)
    train = stages.read_split(spark, cfg, "train").persist()
    test = stages.read_split(spark, cfg, "test").persist()
    items = stages.read_ingested(spark, cfg, "items").persist()
    n_catalog = items.count()
    users = test.select(COL_USER).distinct().persist()
    side = stages.side_data(spark, cfg)
    out: dict[str, Any] = {
        "protocol": {
            "name": "topn",
            "dataset": cfg.dataset_name,
            "k": k,
            **TOPN_PROTOCOL,
            "test_users": users.count(),
            "catalog": n_catalog,
        },
        "models": {},
    }
    tops: dict[str, DataFrame] = {}
    n_users = out["protocol"]["test_users"]
    for name in models:
        with CostMeter(spark) as meter:
            with meter.phase("fit"):
                model = materialize(registry.build(name, scale, models_dir=stages.models_dir_of(cfg)).fit_with(train, side))
            with meter.phase("recommend"):
                top = model.recommend(users, k).persist()
                top.count()
        cost = meter.result()
        cost.update(throughput(cost, 0, n_users))
        fit_s, predict_s = cost["fit_s"], cost["recommend_s"]
        if save_dir:  # the fitted model on disk: its size
            path = f"{save_dir}/{name}"
            fs.delete(spark, path)
            model.save(path)
            cost["model_mb"] = round(dir_bytes(spark, path) / MB, 3)
            fs.delete(spark, path)
        rows: list[DataFrame] = []
        res = topn_report(top, test, train, items, n_catalog, k, per_user=rows if per_user is not None else None, business=True)
        if per_user is not None:
            per_user[name] = rows[0].drop("model").toPandas().set_index(COL_USER).sort_index()  # one row per test user
        res.update({"fit_s": round(fit_s, 3), "predict_s": round(predict_s, 3)})
        res.update({c: v for c, v in cost.items() if c not in ("fit_s", "recommend_s")})
        log.info(
            "%s: ndcg@%d %.4f precision@%d %.4f (fit %.1fs, recommend %.1fs)",
            name,
            k,
            res[f"ndcg@{k}"],
            k,
            res[f"precision@{k}"],
            fit_s,
            predict_s,
        )
        out["models"][name] = res
        release(model)  # materialize() cached its tables; the next model needs the memory
        if blends:
            tops[name] = top
        else:
            top.unpersist()
    for method in blends:
        t = time.perf_counter()
        fused = bl.fuse(tops, method, k).persist()
        fused.count()
        predict_s = time.perf_counter() - t
        rows = []
        res = topn_report(fused, test, train, items, n_catalog, k, per_user=rows, business=True)
        name = f"{BLEND}{method}"
        per_user[name] = rows[0].drop("model").toPandas().set_index(COL_USER).sort_index()
        best = max(models, key=lambda m: (out["models"][m][f"ndcg@{k}"], m))
        a, b = per_user[name].align(per_user[best], join="outer", fill_value=0.0)
        res.update({"fit_s": 0.0, "predict_s": round(predict_s, 3), "members": models, "best_single": best,
                    f"paired_ndcg@{k}_vs_{best}": M.paired_bootstrap(a[f"ndcg@{k}"].to_numpy(), b[f"ndcg@{k}"].to_numpy())})  # fmt: skip
        log.info("%s: ndcg@%d %.4f (best single %s %.4f)", name, k, res[f"ndcg@{k}"], best, out["models"][best][f"ndcg@{k}"])
        out["models"][name] = res
        fused.unpersist()
    for top in tops.values():
        top.unpersist()
    return out


def run_benchmark(
    spark: SparkSession, protocol: str, dataset: str, models: list[str], folds: str = "1-5", k: int = 10, config: str | None = None,
    overrides: list[str] = (), slices: int = 1,
) -> dict[str, Any]:  # fmt: skip
    cfg = load_config(config, [*overrides, *dataset_overrides(dataset)])
    split_models(models, protocol)
    for name in models:
        if name.startswith(BLEND):
            continue
        if name not in registry.REGISTRY:
            raise ValueError(f"unknown model {name!r}; registered: {', '.join(sorted(registry.REGISTRY))}")
    if cfg.dataset.kind == "generated":
        stages.run_generate(spark, cfg)
    if protocol == "rating":
        return run_rating(spark, cfg, models, parse_folds(folds))
    if protocol == "topn":
        return run_topn(spark, cfg, models, k)
    if protocol == "coldstart":
        from recsys_spark.coldstart import run_coldstart

        return run_coldstart(spark, cfg, models, k, {"slices": slices})
    if protocol == "nextitem":
        from recsys_spark.nextitem import run_nextitem

        return run_nextitem(spark, cfg, models, k)
    raise ValueError(f"unknown protocol {protocol!r}: rating, topn, coldstart or nextitem")


def write_result(result: dict[str, Any], out: str | None) -> None:
    """The result as JSON at ``out``; a next-item result's temporal analysis also as ``<out stem>-temporal.png`` beside it."""
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
        if result.get("temporal"):
            from recsys_spark.nextitem import plot_temporal

            plot_temporal(result["temporal"], str(Path(out).with_name(Path(out).stem + "-temporal.png")),
                          f"next-item NDCG@{result['temporal']['k']} by segment ({result['protocol']['dataset']})")  # fmt: skip


def summary_table(result: dict[str, Any]) -> str:
    """A Markdown table of the means."""
    proto = result["protocol"]
    if proto["name"] == "coldstart":
        from recsys_spark.coldstart import summary_table as coldstart_table

        return coldstart_table(result)
    if proto["name"] == "nextitem":
        from recsys_spark.nextitem import summary_table as nextitem_table

        return nextitem_table(result)
    if proto["name"] == "rating":
        lines = ["| model | RMSE | MAE | fit s | predict s | fallback rows |", "|---|---:|---:|---:|---:|---:|"]
        for name, m in result["models"].items():
            lines.append(f"| {name} | {m['rmse']:.4f} | {m['mae']:.4f} | {m['fit_s']:.2f} | {m['predict_s']:.2f} | {m['fallback_rows']} |")
    else:
        k = proto["k"]
        cols = [f"precision@{k}", f"recall@{k}", f"ndcg@{k}", f"map@{k}", f"hr@{k}", f"mrr@{k}", "coverage", "novelty", "diversity"]
        lines = ["| model | " + " | ".join(cols) + " | fit s | recommend s |", "|---|" + "---:|" * (len(cols) + 2)]
        for name, m in result["models"].items():
            lines.append(f"| {name} | " + " | ".join(f"{m[c]:.4f}" for c in cols) + f" | {m['fit_s']:.2f} | {m['predict_s']:.2f} |")
    return "\n".join(lines)
