"""``recsys-spark report --suite``: every registered model on each protocol it serves, on each dataset, in one report.

    recsys-spark report --suite --datasets ml-100k,ml-latest-small --models all

A *cell* is one (dataset, protocol, model); it runs through the benchmark's
protocol functions (:mod:`recsys_spark.benchmark`, :mod:`recsys_spark.coldstart`):

* **rating** (models that predict ratings): ML-100K's canonical folds
  ``u1..u5`` (``--folds``); another dataset, one per-user stratified 75/25
  split with seed 42.  Primary metric RMSE; units: every test rating.
* **topn** (every model): per-user stratified 75/25, seed 42, every unrated
  training item ranked.  Primary metric NDCG@k; units: test users.
* **coldstart** (every model): the new-user (three ratings kept) and new-item
  experiments, each a table of its own.  Primary metric NDCG@k.
* **nextitem** (every model; not in the default ``--protocols``): each user's
  latest rating the target, full ranking (:mod:`recsys_spark.nextitem`).
  Primary metric NDCG@k; units: users with a target.

Each cell writes ``result.json`` (the protocol's figures and costs: fit and
predict/recommend seconds, throughput, peak memory, model size for top-N) and
``values.parquet`` (per-user metrics, or per-rating errors as ``fold, user_idx,
err`` with a digest of the rated pairs in ``result.json``: see :func:`keys_digest`) under
``<out>/cells/<dataset>/<protocol>/<model>/``; a rerun reuses finished cells
(``--force`` reruns them), so a long suite can be stopped and resumed.

The report, per (dataset, protocol[, experiment]): every model's metrics with
a bootstrap 95% interval of the primary metric; the best model and the
selected one (:func:`recsys_spark.selection.select`, cost = fit + predict
seconds) each compared with every other model (paired t-test and Wilcoxon on
per-unit values, bootstrap interval of the difference, Holm-adjusted over the
table's comparisons: :func:`recsys_spark.significance.compare_all`); the cells
asked for and not run.  Written as ``suite.json``, ``suite.md`` and
``suite.html`` under ``<out>``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession

from recsys_spark import metrics as M
from recsys_spark import registry
from recsys_spark import selection as sel
from recsys_spark import significance as sig
from recsys_spark.config import load_config
from recsys_spark.schemas import COL_ITEM, COL_USER

log = logging.getLogger(__name__)

PROTOCOLS = ("rating", "topn", "coldstart", "nextitem")
EXPERIMENTS = ("users", "items")  # the cold-start experiments


def serves(name: str, protocol: str) -> bool:
    """Whether ``name`` takes part in ``protocol``: the rating protocol needs rating predictions."""
    task = registry.REGISTRY[name][1]
    return "rating" in task.split("+") if protocol == "rating" else True


def resolve_models(spec: str, pipeline_names: list[str]) -> list[str]:
    """``all`` (every registered model but aliases, in registry order), ``pipeline`` (the config's models.names) or a comma list."""
    if spec == "all":
        return [n for n in registry.REGISTRY if n not in registry.ALIASES]
    names = list(pipeline_names) if spec == "pipeline" else [m.strip() for m in spec.split(",") if m.strip()]
    unknown = [m for m in names if m not in registry.REGISTRY]
    if unknown:
        raise ValueError(f"--models: unknown model(s) {unknown}; registered: {', '.join(registry.REGISTRY)}")
    return names


def cell_dir(out: str, dataset: str, protocol: str, model: str) -> Path:
    return Path(out) / "cells" / dataset / protocol / model


def done(out: str, dataset: str, protocol: str, model: str) -> bool:
    return (cell_dir(out, dataset, protocol, model) / "result.json").is_file()


def run_cell(spark: SparkSession, cfg: Any, dataset: str, protocol: str, model: str, k: int, folds: list[int], out: str) -> None:
    """One model on one protocol; its figures and per-unit values written atomically (a folder renamed into place)."""
    from recsys_spark import benchmark as bm
    from recsys_spark.coldstart import run_coldstart

    dest = cell_dir(out, dataset, protocol, model)
    tmp = dest.with_name(f".{model}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    values: pd.DataFrame
    if protocol == "rating":
        errors: dict[str, pd.DataFrame] = {}
        result = bm.run_rating(spark, cfg, [model], folds, errors=errors)
        result["keys_sha256"] = keys_digest(errors[model])  # which test ratings, without listing them
        values = errors[model][["fold", COL_USER, "err"]]
    elif protocol == "topn":
        per_user: dict[str, pd.DataFrame] = {}
        result = bm.run_topn(spark, cfg, [model], k, per_user=per_user, save_dir=f"{cfg.paths.output}/suite-models")
        values = per_user[model].reset_index()
    elif protocol == "nextitem":
        from recsys_spark.nextitem import run_nextitem

        per_user = {}
        result = run_nextitem(spark, cfg, [model], k, per_user=per_user)
        values = per_user[model].reset_index()
    else:
        result = run_coldstart(spark, cfg, [model], k, keep_per_user=True)
        frames = []
        for exp in EXPERIMENTS:
            pu = result["experiments"][exp].pop("per_user")[model].reset_index()
            frames.append(pu.assign(experiment=exp))
            result["experiments"][exp].pop("paired", None)  # one model: nothing to pair
        values = pd.concat(frames, ignore_index=True)
    values.to_parquet(tmp / "values.parquet", index=False)
    (tmp / "result.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)


def run_suite(
    spark: SparkSession, config: str | None, overrides: list[str], datasets: list[str], protocols: list[str], models: str,
    k: int = 10, folds: str = "1-5", out: str | None = None, force: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """Run every missing cell, then write the report; returns its payload."""
    from recsys_spark import benchmark as bm
    from recsys_spark import stages

    for p in protocols:
        if p not in PROTOCOLS:
            raise ValueError(f"--protocols: unknown protocol {p!r}; one of {', '.join(PROTOCOLS)}")
    base = load_config(config, overrides)
    out = out or f"{base.paths.output}/suite"
    names = resolve_models(models, base.models.names)
    fold_list = bm.parse_folds(folds)
    plan = [(d, p, m) for d in datasets for p in protocols for m in names if serves(m, p)]
    todo = [c for c in plan if force or not done(out, *c)]
    log.info("suite: %d cells (%d datasets x %d protocols x %d models), %d to run, %d reused", len(plan), len(datasets),
             len(protocols), len(names), len(todo), len(plan) - len(todo))  # fmt: skip
    failed: dict[str, str] = {}
    start = time.perf_counter()
    for i, (d, p, m) in enumerate(todo, 1):
        cfg = load_config(config, [*overrides, *bm.dataset_overrides(d)])
        if cfg.dataset.kind == "generated":
            stages.run_generate(spark, cfg)
        log.info("suite: cell %d/%d: %s on %s, %s (%.0f s so far)", i, len(todo), m, d, p, time.perf_counter() - start)
        try:
            run_cell(spark, cfg, d, p, m, k, fold_list, out)
        except Exception as exc:  # noqa: BLE001 -- one model failing must not lose the others' cells: reported, not hidden
            failed[f"{d}/{p}/{m}"] = f"{type(exc).__name__}: {exc}"
            log.error("suite: %s on %s, %s failed: %s", m, d, p, exc)
    payload = build_report(out, datasets, protocols, names, k, failed)
    write_report(payload, out)
    return payload


# -- the report ----------------------------------------------------------------
def _load(out: str, dataset: str, protocol: str, model: str) -> tuple[dict[str, Any], pd.DataFrame]:
    d = cell_dir(out, dataset, protocol, model)
    return json.loads((d / "result.json").read_text()), pd.read_parquet(d / "values.parquet")


def _cost(m: dict[str, Any]) -> float:
    return float(m.get("fit_s") or 0.0) + float(m.get("predict_s") or m.get("recommend_s") or m.get("total_s") or 0.0)


def table(
    protocol: str, metric: str, rows: dict[str, dict[str, Any]], values: dict[str, np.ndarray], users: np.ndarray | None,
    n_boot: int = 2000,
) -> dict[str, Any]:  # fmt: skip
    """One table: every model's figures, its interval, the best and the selected model against every other (Holm over the table)."""
    lower = metric == "rmse"
    models = list(rows)
    intervals = {}
    for m in models:
        v = values[m]
        if users is not None:
            r = M.paired_rmse_bootstrap(users, np.zeros_like(v), v, n_boot)
        else:
            r = M.paired_bootstrap(v, np.zeros_like(v), n_boot)
        intervals[m] = [r["diff"], r["ci95_lo"], r["ci95_hi"]]
    scores = {m: float(rows[m][metric]) for m in models}
    best = (min if lower else max)(models, key=lambda m: (scores[m], m))
    out: dict[str, Any] = {"metric": metric, "units": "ratings" if users is not None else "users",
                           "n": int(len(next(iter(values.values())))), "models": rows, "intervals": intervals, "best": best}  # fmt: skip
    if len(models) < 2:
        out.update({"selected": best, "comparisons": [], "rationale": f"{best} is the only model in this table."})
        return out
    costs = {m: _cost(rows[m]) for m in models}
    coverage = {m: float(rows[m]["coverage"]) for m in models if "coverage" in rows[m]}
    choice = sel.select(metric, scores, costs, coverage, values, users)
    refs = [best] + ([choice["selected"]] if choice["selected"] != best else [])
    out.update({
        "selected": choice["selected"], "rationale": choice["rationale"], "pareto_front": choice["pareto_front"],
        "comparisons": sig.compare_all(values, refs, higher_is_better=not lower, users=users, n_boot=n_boot),
    })  # fmt: skip
    return out


def _aligned_topn(frames: dict[str, pd.DataFrame], metric: str) -> dict[str, np.ndarray]:
    """Per-user values on the union of users (a user a model gave no list scores 0)."""
    wide = pd.concat({m: f.set_index(COL_USER)[metric] for m, f in frames.items()}, axis=1).fillna(0.0).sort_index()
    return {m: wide[m].to_numpy(dtype=np.float64) for m in frames}


KEYS = ("fold", COL_USER, COL_ITEM)  # a rating cell's rows, sorted by these


def keys_digest(frame: pd.DataFrame) -> str:
    """SHA-256 of a rating cell's (fold, user, item) keys in row order: the cell stores the digest, not the pairs.

    The per-rating values keep ``fold``, ``user_idx`` and ``err`` only, so a committed cell does not
    list which user rated which item (MovieLens may not be redistributed); two cells pair up when
    their digests agree.
    """
    text = "\n".join(f"{f},{u},{i}" for f, u, i in frame[list(KEYS)].itertuples(index=False, name=None))
    return hashlib.sha256(text.encode()).hexdigest()


def _aligned_errors(cells: dict[str, tuple[dict[str, Any], pd.DataFrame]]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-rating errors on the same ratings in the same order; every model predicts every test rating."""
    digests = {m: r.get("keys_sha256") or keys_digest(f) for m, (r, f) in cells.items()}
    first_model = next(iter(cells))
    first = cells[first_model][1]
    for m, (_, f) in cells.items():
        if len(f) != len(first) or digests[m] != digests[first_model]:
            raise ValueError(f"suite: {m}'s rating cell covers other test ratings than {first_model}'s: rerun it with --force")
    return {m: f["err"].to_numpy(dtype=np.float64) for m, (_, f) in cells.items()}, first[COL_USER].to_numpy()


def build_report(out: str, datasets: list[str], protocols: list[str], names: list[str], k: int, failed: dict[str, str]) -> dict[str, Any]:
    """The tables of every (dataset, protocol[, experiment]) from the finished cells."""
    ndcg = f"ndcg@{k}"
    tables: list[dict[str, Any]] = []
    missing: list[str] = []
    for d in datasets:
        for p in protocols:
            have = [m for m in names if serves(m, p) and done(out, d, p, m)]
            missing += [f"{d}/{p}/{m}" for m in names if serves(m, p) and not done(out, d, p, m)]
            if not have:
                continue
            cells = {m: _load(out, d, p, m) for m in have}
            if p == "rating":
                rows = {m: _flat(r["models"][m]) for m, (r, _) in cells.items()}
                values, users = _aligned_errors(cells)
                t = table(p, "rmse", rows, values, users)
                t["protocol_spec"] = next(iter(cells.values()))[0]["protocol"]
                tables.append({"dataset": d, "protocol": p, **t})
            elif p in ("topn", "nextitem"):
                rows = {m: _flat(r["models"][m]) for m, (r, _) in cells.items()}
                t = table(p, ndcg, rows, _aligned_topn({m: v for m, (_, v) in cells.items()}, ndcg), None)
                t["protocol_spec"] = next(iter(cells.values()))[0]["protocol"]
                tables.append({"dataset": d, "protocol": p, **t})
            else:
                for exp in EXPERIMENTS:
                    rows = {m: _flat(r["experiments"][exp]["models"][m]) for m, (r, _) in cells.items()}
                    for m in rows:  # a top-N-only model's predictions are not ratings
                        if not serves(m, "rating"):
                            for key in ("rmse", "mae"):
                                rows[m].pop(key, None)
                    frames = {m: v[v["experiment"] == exp] for m, (_, v) in cells.items()}
                    t = table(p, ndcg, rows, _aligned_topn(frames, ndcg), None)
                    spec = next(iter(cells.values()))[0]
                    t["protocol_spec"] = {**spec["protocol"], "experiment": f"new {exp}", "counts": spec["experiments"][exp]["counts"]}
                    tables.append({"dataset": d, "protocol": f"{p} ({exp})", **t})
    return {"k": k, "datasets": datasets, "protocols": protocols, "models": names, "tables": tables,
            "not_run": missing, "failed": failed}  # fmt: skip


def _flat(m: dict[str, Any]) -> dict[str, Any]:
    return {c: v for c, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


COLUMNS = {
    "rating": ("rmse", "mae", "fallback_rows", "fit_s", "predict_s", "predict_rows_per_s", "peak_jvm_heap_mb", "peak_python_workers_mb"),
    "topn": ("ndcg@{k}", "precision@{k}", "recall@{k}", "mrr@{k}", "coverage", "gini", "novelty", "diversity", "serendipity@{k}",
             "fit_s", "predict_s", "recommend_s_per_1k_users", "peak_driver_python_mb", "peak_jvm_heap_mb", "peak_python_workers_mb",
             "model_mb"),
    "nextitem": ("ndcg@{k}", "hr@{k}", "mrr@{k}", "ndcg@{k}_valid", "fit_s", "recommend_s"),
    "coldstart": ("ndcg@{k}", "precision@{k}", "recall@{k}", "hr@{k}", "rmse", "coverage", "fit_s", "total_s"),
}  # fmt: skip


def columns(t: dict[str, Any], k: int) -> list[str]:
    cols = [c.format(k=k) for c in COLUMNS[t["protocol"].split(" ")[0]]]
    return [c for c in cols if any(c in r for r in t["models"].values())]


def markdown(payload: dict[str, Any]) -> str:
    k = payload["k"]
    parts = [f"# Every model on every protocol\n\nk = {k}. Intervals: bootstrap 95% over users (with their ratings for RMSE). "
             "p-values: paired t-test and Wilcoxon signed-rank on per-user values (per-rating squared errors for RMSE), "
             "Holm-adjusted over each table's comparisons.\n"]  # fmt: skip
    for t in payload["tables"]:
        cols = columns(t, k)
        metric = t["metric"]
        vs = {r["model"]: r for r in t["comparisons"] if r["reference"] == t["best"]}
        parts.append(f"## {t['dataset']}, {t['protocol']}\n\n{len(t['models'])} models, {t['n']} {t['units']}. {t['rationale']}\n")
        head = ["model", f"{metric} (95% CI)", *[c for c in cols if c != metric], f"vs {t['best']} (95% CI)", "Holm p (t / W)"]
        lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
        order = sorted(t["models"], key=lambda m: t["models"][m][metric], reverse=metric != "rmse")
        for m in order:
            v, lo, hi = t["intervals"][m]
            r = vs.get(m)
            diff = f"{r['diff']:+.4f} [{r['ci95_lo']:+.4f}, {r['ci95_hi']:+.4f}]" if r else ""
            p = f"{r['t_p_holm']:.2g} / {r['wilcoxon_p_holm']:.2g}" if r else ""
            cells = [_fmt(t["models"][m].get(c)) for c in cols if c != metric]
            lines.append(f"| {m} | {v:.4f} [{lo:.4f}, {hi:.4f}] | " + " | ".join([*cells, diff, p]) + " |")
        parts.append("\n".join(lines) + "\n")
    if payload["not_run"]:
        parts.append(f"## Not run\n\n{len(payload['not_run'])} cells asked for have no result: " + ", ".join(payload["not_run"]) + ".\n")
    if payload["failed"]:
        parts.append("## Failed\n\n" + "".join(f"- {c}: {why}\n" for c, why in payload["failed"].items()))
    return "\n".join(parts)


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) >= 100):
        return f"{int(v)}"
    return f"{v:.4g}" if abs(v) >= 1 else f"{v:.4f}"


def write_report(payload: dict[str, Any], out: str) -> None:
    from recsys_spark.report import suite_page

    Path(out).mkdir(parents=True, exist_ok=True)
    Path(out, "suite.json").write_text(json.dumps(payload, indent=2, default=float) + "\n")
    Path(out, "suite.md").write_text(markdown(payload))
    Path(out, "suite.html").write_text(suite_page(payload))
    log.info("suite: %d tables, %d cells not run, %d failed -> %s/suite.{json,md,html}", len(payload["tables"]),
             len(payload["not_run"]), len(payload["failed"]), out)  # fmt: skip
