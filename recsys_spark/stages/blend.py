"""blend: learn on the validation part how to combine the members; write the blended test predictions.

Ratings: the level-1 tables of the members' predictions (valid: members fitted
on train; test: members refitted on train + valid) go under ``level1/``; rows a
member did not predict are counted and answered by a complete member; every
rating blend of ``blend.rating_methods`` and every single member is scored by
K-fold cross-validation over validation users; the lowest RMSE wins, is refit
on the whole validation table and applied to the test table.  Top-N: the
fusion of ``blend.topn_methods`` and the member subset with the best
validation NDCG@k (greedy forward selection), applied to the members' test
lists; each fused item names its ``contributors``.  See :mod:`recsys_spark.blend`.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import blend as bl
from recsys_spark import registry
from recsys_spark import split as spl
from recsys_spark.config import Config
from recsys_spark.io import fs
from recsys_spark.schemas import COL_ITEM, COL_MODEL, COL_PREDICTION, COL_RANK, COL_SCORE, COL_SOURCE, COL_USER
from recsys_spark.stages import layout
from recsys_spark.stages.manifest import fingerprint, run_stage
from recsys_spark.stages.stage import Stage, once

log = logging.getLogger(__name__)


def members(cfg: Config) -> list[str]:
    """The blend's members: ``blend.members``, or every model of ``models.names``."""
    names = list(cfg.blend.members or cfg.models.names)
    for n in names:
        if n not in cfg.models.names:
            raise ValueError(f"blend.members: {n!r} is not in models.names, so it has no predictions to blend")
    return names


def rating_members(names: list[str]) -> list[str]:
    """Members whose predictions are ratings (a top-N-only model's scores are not on the rating scale)."""
    return [n for n in names if "rating" in registry.REGISTRY[n][1]]


def check_predictions(spark: SparkSession, cfg: Config, names: list[str]) -> None:
    """Each member's predictions exist and were made on the current split, else an error naming both."""
    split_path, split_id = layout.split(cfg), fingerprint(spark, layout.split(cfg))
    for n in names:
        manifest = fs.read_manifest(spark, layout.predictions(cfg, n))
        if manifest is None:
            where = layout.predictions(cfg, n)
            raise bl.BlendError(f"blend: model {n!r} has no predictions at {where}: run `recsys-spark predict --model {n}`")
        made_on = manifest.get("inputs", {}).get(split_path)
        if made_on != split_id:
            raise bl.BlendError(
                f"blend: the predictions of {n!r} were made on another split than {layout.split_name(cfg)} "
                f"({made_on} != {split_id}): rerun `recsys-spark predict --model {n}`"
            )


def _level1(spark: SparkSession, cfg: Config, names: list[str], part: str, pairs: DataFrame, fit_on: DataFrame) -> DataFrame:
    preds = {n: layout.read_predictions(spark, cfg, n, part, "ratings") for n in names}
    return bl.level1(preds, pairs, fit_on)


def _lists_pandas(spark: SparkSession, cfg: Config, names: list[str], users: DataFrame) -> dict[str, pd.DataFrame]:
    out = {}
    for n in names:
        top = layout.read_predictions(spark, cfg, n, "valid", "topn").join(users, COL_USER).select(COL_USER, COL_ITEM, COL_RANK)
        out[n] = top.toPandas()  # bounded: blend.max_users users x k rows
    return out


def run_blend(spark: SparkSession, cfg: Config, force: bool = False) -> dict[str, Any]:
    """Choose and fit the rating blend and the top-N fusion on valid; write the blended test predictions."""
    names = members(cfg)
    output = layout.blend(cfg)
    bc, k = cfg.blend, cfg.models.k

    def body(tmp: str) -> dict[str, Any]:
        check_predictions(spark, cfg, names)
        scale = layout.rating_scale(spark, cfg)
        train = layout.read_split(spark, cfg, spl.TRAIN)
        valid = layout.read_split(spark, cfg, spl.VALID)
        test = layout.read_split(spark, cfg, spl.TEST)
        has_valid = valid.limit(1).count() > 0
        mean = float(train.agg(F.avg("rating")).first()[0] or 0.0)  # a scalar: answers rows no member predicted
        counts: dict[str, Any] = {"members": names}
        rmembers = rating_members(names)

        # -- ratings ----------------------------------------------------------------------
        if not rmembers:
            raise bl.BlendError(f"blend: none of {names} predicts ratings; add a rating model to models.names")
        if has_valid:
            l1_valid = _level1(spark, cfg, rmembers, "valid", valid, train)
            l1_valid.write.parquet(f"{tmp}/level1/valid")  # the joins run once; checked on what was written
            l1_valid, counts["valid_missing"] = bl.fill_missing(spark.read.parquet(f"{tmp}/level1/valid"), rmembers, "valid", mean)
            frame = bl.sample_users(l1_valid, bc.max_rows).toPandas()  # bounded by blend.max_rows
            lo, hi = scale.lo, scale.hi
            cv = {f"single:{n}": bl.single_rmse(frame, n, lo, hi) for n in rmembers}
            for method in bc.rating_methods:
                cv[method] = bl.cv_rmse(method, frame, rmembers, bc.folds, lo, hi)
            chosen = min(cv, key=lambda m: (cv[m], m))
            log.info("blend ratings: %s has the lowest cross-validated RMSE on valid (%s)", chosen,
                     {m: round(v, 4) for m, v in sorted(cv.items(), key=lambda kv: kv[1])})  # fmt: skip
            if chosen.startswith("single:"):
                rb = bl.RatingBlend("ridge", [chosen.split(":", 1)[1]], 0.0, [1.0])  # the member itself
            else:
                rb = bl.fit_rating_blend(chosen, frame, rmembers)
            counts["ratings"] = {"chosen": chosen, "cv_rmse": cv, "fit_rows": len(frame), "blend": rb.to_dict()}
        else:
            log.warning("blend: no validation rows (split.valid_ratio = 0): ratings are the mean of %s, untrained", rmembers)
            rb = bl.RatingBlend("mean", rmembers)
            counts["ratings"] = {"chosen": "mean", "cv_rmse": {}, "fit_rows": 0, "blend": rb.to_dict(), "untrained": True}
        l1_test = _level1(spark, cfg, rmembers, "test", test, train.unionByName(valid))
        l1_test.write.parquet(f"{tmp}/level1/test")
        l1_test, counts["test_missing"] = bl.fill_missing(spark.read.parquet(f"{tmp}/level1/test"), rmembers, "test", mean)
        label = counts["ratings"]["chosen"]
        pred = F.least(F.lit(scale.hi), F.greatest(F.lit(scale.lo), rb.predict_col()))
        source = rb.source_col() if rb.method == "switch" else F.lit(f"blend:{label}")
        ratings = l1_test.select(
            COL_USER, COL_ITEM, pred.alias(COL_PREDICTION), source.alias(COL_SOURCE), F.lit("blend").alias(COL_MODEL)
        )
        ratings.write.parquet(f"{tmp}/test/ratings")
        counts["ratings"]["test_rows"] = spark.read.parquet(f"{tmp}/test/ratings").count()

        # -- top-N ---------------------------------------------------------------------------
        if has_valid:
            users = bl.sample_users(valid.select(COL_USER).distinct(), bc.max_users)
            lists = _lists_pandas(spark, cfg, names, users)
            rel_rows = valid.join(users, COL_USER).select(COL_USER, COL_ITEM).toPandas()  # bounded like the lists
            relevant = {int(u): set(g[COL_ITEM].tolist()) for u, g in rel_rows.groupby(COL_USER)}
            sel = _select(lists, relevant, k, bc)
            chosen_t = sel["chosen"]
        else:
            chosen_t = {"method": bc.topn_methods[0] if bc.topn_methods else "rrf", "members": names, "ndcg": None}
            sel = {"chosen": chosen_t, "untrained": True}
            log.warning("blend: no validation rows: top-N is %s over every member, untrained", chosen_t["method"])
        test_lists = {n: layout.read_predictions(spark, cfg, n, "test", "topn") for n in chosen_t["members"]}
        method = chosen_t["method"] if chosen_t["method"] != "single" else "rrf"
        fused = bl.fuse(test_lists, method, k).select(
            COL_USER, COL_ITEM, COL_RANK, COL_SCORE, "contributors",
            F.lit(f"blend:{chosen_t['method']}").alias(COL_SOURCE), F.lit("blend").alias(COL_MODEL),
        )  # fmt: skip
        fused.write.parquet(f"{tmp}/test/topn")
        counts["topn"] = {**sel, "test_users": spark.read.parquet(f"{tmp}/test/topn").select(COL_USER).distinct().count()}
        log.info("blend top-N: %s of %s (validation NDCG@%d %s)", chosen_t["method"], chosen_t["members"], k, chosen_t["ndcg"])
        counts["chosen"] = f"ratings {label}; top-N {chosen_t['method']}({', '.join(chosen_t['members'])})"
        return counts

    inputs = [layout.split(cfg), *(layout.predictions(cfg, n) for n in names)]  # it reads the split's labels too
    return run_stage(spark, cfg, "blend", output, STAGE.sections, inputs, body, force, {"members": names, "k": k})


def _select(lists: dict[str, pd.DataFrame], relevant: dict[int, set[int]], k: int, bc: Any) -> dict[str, Any]:
    sel = bl.select_fusion(lists, relevant, k, bc.max_members)
    keep = {m: v for m, v in sel["methods"].items() if m in bc.topn_methods}
    best = {"method": "single", "members": [max(sel["singles"], key=lambda m: (sel["singles"][m], m))]}
    best["ndcg"] = sel["singles"][best["members"][0]]
    for m, v in keep.items():
        if v["ndcg"] > best["ndcg"]:
            best = {"method": m, "members": v["members"], "ndcg": v["ndcg"]}
    singles = {m: round(float(v), 4) for m, v in sel["singles"].items()}
    methods = {m: {"members": v["members"], "ndcg": round(float(v["ndcg"]), 4)} for m, v in keep.items()}
    return {"chosen": {**best, "ndcg": round(float(best["ndcg"]), 4)}, "singles": singles, "methods": methods,
            "users": len(relevant)}  # fmt: skip


STAGE = Stage(
    name="blend", run=run_blend,
    help="learn on the validation part how to combine the models; write the blended test ratings and top-N",
    sections=("blend",), inputs=lambda cfg, _m=None: [layout.split(cfg), *(layout.predictions(cfg, n) for n in members(cfg))],
    outputs=lambda cfg, _m=None: [layout.blend(cfg)], instances=once,
)  # fmt: skip
