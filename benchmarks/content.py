"""Content-based model selection and feature importance, on validation data only.

    RECSYS_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/content.py sweep --dataset ml-latest-small
    RECSYS_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/content.py ablation --dataset ml-latest-small

Both start from the *training* part of the top-N protocol (per-user
stratified 75/25, seed 42) and carve a validation set out of it (per user,
80/20, seed 7): the protocol's test part is never read, so the values chosen
here can be the defaults in ``recsys_spark/conf/models/content.toml`` without touching the
numbers the README reports.

* ``sweep``: a grid (``--grid '{"weighting": [...], "prior": [...]}'``) ->
  NDCG@10 (and RMSE with ``--rmse``) on validation; ``--cold-users`` cuts the
  validation users to their first 3 training ratings instead (the cold-user
  protocol's situation).
* ``ablation``: each feature group dropped in turn (weight 0) -> NDCG@10 and
  RMSE on validation, and the delta to all groups; plus the terms whose
  items are rated furthest from the bias baseline (``term_signal``).
* ``affinity``: a probe for new users (``--cold-users`` validation), not a
  registered model: popularity alone against ``log(1 + n_j) + beta * a(u, j)``,
  where ``a`` is a *learned* genre-to-genre affinity instead of the profile
  cosine: ``W[g, h] = log(P(later item has h | first items have g) /
  P(later item has h))``, estimated on the warm users (their first 3
  training ratings by time against the rest), ``a(u, j) = p_u W x_j`` with
  ``p_u`` the genre shares of the user's rated items and ``x_j`` the item's.
* ``demographic``: the same validation: popularity within the user's
  demographic segment (gender, age group, occupation from the users table)
  against popularity alone.
* ``appeal``: the same validation, a non-personal probe: can the item
  features predict which items new users go on to rate better than
  popularity alone?  A softmax choice model over log popularity, item age
  (days since its first rating), release-year bins and genres, fitted on a
  seeded fifth of the warm users treated as new (their ratings after the
  first 3 are the choices, and are left out of the popularity feature).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _validation(dataset: str, cold_users: bool = False):  # type: ignore[no-untyped-def]
    from recsys_spark import split as spl
    from recsys_spark import stages
    from recsys_spark.benchmark import dataset_overrides
    from recsys_spark.config import load_config
    from recsys_spark.logs import setup_logging
    from recsys_spark.spark import get_spark

    setup_logging("benchmark")
    cfg = load_config(
        ROOT / "conf" / "local.toml",
        [
            *dataset_overrides(dataset),
            "split.protocol=stratified",
            "split.ratio=0.75",
            "split.seed=42",
            "split.valid_ratio=0.0",
            "split.n_negatives=0",
        ],
    )
    spark = get_spark(cfg.spark, cfg.checkpoint_dir, f"content benchmark {dataset}")
    if cfg.dataset.kind == "generated":
        stages.run_generate(spark, cfg)
    stages.run_ingest(spark, cfg)
    stages.run_split(spark, cfg)
    train = stages.read_split(spark, cfg, "train")
    if cold_users:  # validation users keep their first 3 training ratings, like the cold-user protocol
        from recsys_spark.coldstart import cold_user_split

        fit_on, valid, _ = cold_user_split(train, fraction=0.2, keep=3, min_ratings=10, seed=7)
        return spark, cfg, fit_on.persist(), valid.persist()
    carved = spl.stratified_split(train, 0.8, seed=7)
    fit_on = carved.where("part = 'train'").drop("part").persist()
    valid = carved.where("part = 'test'").drop("part").persist()
    return spark, cfg, fit_on, valid


def _score(spark, cfg, fit_on, valid, params: dict, k: int = 10, rmse: bool = True) -> dict:  # type: ignore[no-untyped-def]
    from recsys_spark import metrics as M
    from recsys_spark import stages
    from recsys_spark.content import ContentBased

    t = time.perf_counter()
    model = ContentBased(scale=stages.rating_scale(spark, cfg), **params).fit(fit_on, side=stages.side_data(spark, cfg))
    top = model.recommend(valid.select("user_idx").distinct(), k).persist()
    rank = M.ranking_metrics(top, valid, k).metrics
    out = {"ndcg@10": rank[f"ndcg@{k}"], "precision@10": rank[f"precision@{k}"]}
    if rmse:
        out["rmse"] = M.rating_metrics(model.predict(valid.select("user_idx", "item_idx")), valid)["rmse"]
    out["s"] = round(time.perf_counter() - t, 1)
    top.unpersist()
    return out


def sweep(args: argparse.Namespace) -> dict:
    spark, cfg, fit_on, valid = _validation(args.dataset, args.cold_users)
    grid = json.loads(args.grid)
    rows = []
    for values in itertools.product(*grid.values()):
        params = dict(zip(grid, values, strict=True))
        res = _score(spark, cfg, fit_on, valid, params, rmse=args.rmse)
        rows.append({**params, **res})
        print(json.dumps(rows[-1]), flush=True)
    what = "cold users: 20% of the train part's users keep their first 3 ratings (seed 7)" if args.cold_users else "per-user 80/20 seed 7"
    return {"dataset": args.dataset, "validation": f"train part of the top-N protocol; {what}", "rows": rows}


def ablation(args: argparse.Namespace) -> dict:
    from recsys_spark import stages
    from recsys_spark.content import DEFAULT_WEIGHTS, ContentBased, term_signal
    from recsys_spark.registry import model_params

    spark, cfg, fit_on, valid = _validation(args.dataset)
    tuned = {k: v for k, v in model_params("content").items() if k != "weights"}
    weights = {**DEFAULT_WEIGHTS, **model_params("content").get("weights", {})}
    full = _score(spark, cfg, fit_on, valid, {**tuned, "weights": weights})
    rows = [{"dropped": "(none)", **full}]
    print(json.dumps(rows[-1]), flush=True)
    for g in weights:
        res = _score(spark, cfg, fit_on, valid, {**tuned, "weights": {**weights, g: 0.0}})
        rows.append({"dropped": g, **res, "delta_ndcg@10": res["ndcg@10"] - full["ndcg@10"], "delta_rmse": res["rmse"] - full["rmse"]})
        print(json.dumps(rows[-1]), flush=True)
    model = ContentBased(scale=stages.rating_scale(spark, cfg), **{**tuned, "weights": weights}).fit(
        fit_on, side=stages.side_data(spark, cfg)
    )
    terms = [
        r.asDict() for r in term_signal(fit_on, model.vectors, model.vocabulary, min_items=args.min_items, top=args.top_terms).collect()
    ]
    for t in terms:
        print(json.dumps(t), flush=True)
    return {
        "dataset": args.dataset,
        "validation": "train part of the top-N protocol, per-user 80/20 seed 7",
        "groups": rows,
        "terms": terms,
    }


class _ColdUsers:
    """The cold-user validation in numpy: the fit part sorted by time (``_r``: a rating's place in its user's
    history), the validation users' own training items, the genre shares per item, and a top-10 scorer."""

    def __init__(self, dataset: str) -> None:
        import numpy as np
        import pandas as pd

        from recsys_spark import stages
        from recsys_spark.schemas import COL_GENRES, COL_ITEM, COL_TIMESTAMP, COL_USER, COL_YEAR

        self.spark, cfg, fit_on, self.valid = _validation(dataset, cold_users=True)
        self.cfg = cfg
        fit = fit_on.select(COL_USER, COL_ITEM, COL_TIMESTAMP).toPandas()
        self.vusers = set(self.valid.select(COL_USER).distinct().toPandas()[COL_USER])
        items = stages.side_data(self.spark, cfg).items.select(COL_ITEM, COL_GENRES, COL_YEAR).toPandas()
        self.genres = sorted({g for gs in items[COL_GENRES] for g in gs})
        n = self.n_items = int(max(items[COL_ITEM].max(), fit[COL_ITEM].max())) + 1
        self.G = np.zeros((n, len(self.genres)))  # genre flags
        self.year = np.full(n, np.nan)
        for i, gs, y in zip(items[COL_ITEM], items[COL_GENRES], items[COL_YEAR], strict=True):
            for g in gs:
                self.G[i, self.genres.index(g)] = 1.0
            if not pd.isna(y):
                self.year[i] = float(y)
        self.share = self.G / np.maximum(self.G.sum(1, keepdims=True), 1.0)  # an item's genre shares
        fit = fit.sort_values([COL_USER, COL_TIMESTAMP, COL_ITEM])
        fit["_r"] = fit.groupby(COL_USER).cumcount()
        self.fit = fit
        self.cand = np.zeros(n, bool)  # the protocol's candidates: items with a training rating
        self.cand[fit[COL_ITEM].unique()] = True
        self.rated = fit[fit[COL_USER].isin(self.vusers)].groupby(COL_USER)[COL_ITEM].apply(lambda s: s.to_numpy())

    def warm(self):  # type: ignore[no-untyped-def]
        return self.fit[~self.fit["user_idx"].isin(self.vusers)]

    def counts(self, frame=None):  # type: ignore[no-untyped-def]
        import numpy as np

        return np.bincount((self.fit if frame is None else frame)["item_idx"], minlength=self.n_items).astype(float)

    def score(self, fn, with_user: bool = False) -> dict:  # type: ignore[no-untyped-def]
        """NDCG@10 / P@10 of the top-10 unseen candidates by ``fn(seen items) -> score per item``
        (``fn(seen items, user)`` with ``with_user``)."""
        import numpy as np
        import pandas as pd

        from recsys_spark import metrics as M
        from recsys_spark.schemas import COL_ITEM, COL_RANK, COL_SCORE, COL_USER

        recs = []
        for u, seen in self.rated.items():
            sc = np.array(fn(seen, u) if with_user else fn(seen), dtype=float)
            sc[~self.cand] = -np.inf
            sc[seen] = -np.inf
            top = np.argsort(-sc, kind="stable")[:10]
            recs += [(int(u), int(j), float(sc[j]), r + 1) for r, j in enumerate(top)]
        top_df = self.spark.createDataFrame(pd.DataFrame(recs, columns=[COL_USER, COL_ITEM, COL_SCORE, COL_RANK]))
        m = M.ranking_metrics(top_df, self.valid, 10).metrics
        return {"ndcg@10": m["ndcg@10"], "precision@10": m["precision@10"], "users": len(self.rated)}


_COLD_VALIDATION = "train part of the top-N protocol; cold users: 20% of the train part's users keep their first 3 ratings (seed 7)"


def affinity(args: argparse.Namespace) -> dict:
    import numpy as np

    cu = _ColdUsers(args.dataset)
    share = cu.share
    warm = cu.warm()
    first = warm[warm["_r"] < 3].groupby("user_idx")["item_idx"].apply(lambda s: share[s.to_numpy()].sum(0))
    later = warm[warm["_r"] >= 3].groupby("user_idx")["item_idx"].apply(lambda s: share[s.to_numpy()].sum(0))
    both = first.index.intersection(later.index)
    P, L = np.stack(first.loc[both].to_numpy()), np.stack(later.loc[both].to_numpy())
    P, L = P / np.maximum(P.sum(1, keepdims=True), 1e-12), L / np.maximum(L.sum(1, keepdims=True), 1e-12)
    eps = 1e-4
    W = np.log((P.T @ L / np.maximum(P.sum(0)[:, None], 1e-12) + eps) / (L.mean(0)[None, :] + eps))
    logpop = np.log1p(cu.counts())
    rows = []
    for beta in [float(b) for b in args.betas.split(",")]:

        def fn(seen, beta=beta):  # type: ignore[no-untyped-def]
            p = share[seen].sum(0)
            return logpop + beta * (share @ (W.T @ (p / max(p.sum(), 1e-12))))

        rows.append({"beta": beta, **cu.score(fn)})
        print(json.dumps(rows[-1]), flush=True)
    return {
        "dataset": args.dataset,
        "validation": _COLD_VALIDATION,
        "model": "log(1 + n_j) + beta * p_u W x_j, W the genre-to-genre log-lift learned on warm users (beta 0: popularity alone)",
        "warm_users": int(len(both)),
        "rows": rows,
    }


def appeal(args: argparse.Namespace) -> dict:
    import zlib

    import numpy as np
    from scipy.optimize import minimize

    cu = _ColdUsers(args.dataset)
    fit = cu.fit
    edges = [float(e) for e in args.year_edges.split(",")]
    ybins = list(zip([-np.inf, *edges], [*edges, np.inf], strict=True))
    Y = np.stack([((cu.year >= a) & (cu.year < b)).astype(float) for a, b in ybins], 1)
    first_t = fit.groupby("item_idx")["timestamp"].min().reindex(range(cu.n_items)).to_numpy(dtype=float)
    age = np.nan_to_num(np.log1p(np.clip((float(fit["timestamp"].max()) - first_t) / 86400.0, 0, None)))
    names = ["log_popularity", "log_age_days"] + [f"year [{a:g}, {b:g})" for a, b in ybins] + [f"genre {g}" for g in cu.genres]

    def features(counts):  # type: ignore[no-untyped-def]
        return np.column_stack([np.log1p(counts), age, Y, cu.G])

    # learn on pseudo-new users among the warm ones (a seeded fifth): their ratings after the first 3 are the
    # choices to explain, and are left out of the popularity they are explained by, as for real new users
    warm = cu.warm()
    pseudo = {u for u in warm["user_idx"].unique() if zlib.crc32(str(u).encode()) % 5 == 0}
    later = warm[warm["user_idx"].isin(pseudo) & (warm["_r"] >= 3)]
    rest = fit.drop(later.index)
    cand = np.zeros(cu.n_items, bool)
    cand[rest["item_idx"].unique()] = True
    X = features(cu.counts(rest))[cand]
    c = cu.counts(later)[cand]
    mean, sd = X.mean(0), X.std(0) + 1e-9
    Z, n = (X - mean) / sd, c.sum()
    lam = float(args.l2)

    def nll(w):  # type: ignore[no-untyped-def]
        # multinomial choice: P(j) = softmax(Z w)_j; the choices' log likelihood, L2-penalized, per choice
        s = Z @ w
        m = s.max()
        e = np.exp(s - m)
        ll = c @ s - n * (m + np.log(e.sum()))
        grad = Z.T @ c - n * (Z.T @ (e / e.sum()))
        return (-ll + lam * w @ w) / n, (-grad + 2 * lam * w) / n

    w = minimize(nll, np.zeros(Z.shape[1]), jac=True, method="L-BFGS-B").x
    appeal_score = ((features(cu.counts()) - mean) / sd) @ w  # on the real new users: popularity from the whole fit part
    logpop = np.log1p(cu.counts())
    rows = [{"model": "popularity", **cu.score(lambda seen: logpop)}, {"model": "learned appeal", **cu.score(lambda seen: appeal_score)}]
    for r in rows:
        print(json.dumps(r), flush=True)
    weights = dict(zip(names, (float(v) for v in w), strict=True))
    print(json.dumps(weights), flush=True)
    return {
        "dataset": args.dataset,
        "validation": _COLD_VALIDATION,
        "model": "softmax choice model over standardized item features (log popularity, log days since the item's first rating, "
        "release-year bins, genre flags), L2 penalty, fitted on the choices after their first 3 ratings "
        "of a seeded fifth of the warm users",
        "l2": lam,
        "pseudo_new_users": len(pseudo),
        "choices": int(n),
        "weights": weights,
        "rows": rows,
    }


def demographic(args: argparse.Namespace) -> dict:
    """Popularity within the new user's demographic segment, shrunk towards the global shares:
    ``p_s(j) = (n_sj + m p(j)) / (N_s + m)``, ``m`` large is popularity alone.  Counted over every
    training rating (the model's :func:`recsys_spark.content.segment_prior` does the same) and, for
    contrast, over the warm users' ratings only.  Needs the dataset's users table (ML-100K)."""
    import numpy as np

    from recsys_spark import stages
    from recsys_spark.schemas import COL_AGE, COL_GENDER, COL_ITEM, COL_OCCUPATION, COL_USER

    cu = _ColdUsers(args.dataset)
    users = (
        stages.read_ingested(cu.spark, cu.cfg, "users").select(COL_USER, COL_GENDER, COL_AGE, COL_OCCUPATION).toPandas().set_index(COL_USER)
    )
    edges = [int(b) for b in args.age_edges.split(",")]
    users["age_bin"] = np.digitize(users[COL_AGE].fillna(-1).to_numpy(), edges)
    segmentations = {
        "gender": [COL_GENDER],
        "age": ["age_bin"],
        "occupation": [COL_OCCUPATION],
        "gender x age": [COL_GENDER, "age_bin"],
        "gender x age x occupation": [COL_GENDER, "age_bin", COL_OCCUPATION],
    }
    rows = []
    for counted, frame in (("all training ratings", cu.fit), ("warm users' ratings only", cu.warm())):
        counts = cu.counts(frame)
        p_all = counts / counts.sum()
        rows.append({"counted": counted, "segments": "none (popularity)", "m": None, **cu.score(lambda seen, counts=counts: counts)})
        print(json.dumps(rows[-1]), flush=True)
        for name, cols in segmentations.items():
            key = users[cols].astype(str).agg("|".join, axis=1)
            seg_of_rating = key.reindex(frame[COL_USER]).to_numpy()
            items = frame[COL_ITEM].to_numpy()
            seg_counts = {s: np.bincount(items[seg_of_rating == s], minlength=cu.n_items).astype(float) for s in set(seg_of_rating)}
            for m in [float(v) for v in args.shrink.split(",")]:

                def fn(seen, u, m=m, key=key, seg_counts=seg_counts, p_all=p_all):  # type: ignore[no-untyped-def]
                    n_s = seg_counts.get(key.get(u), np.zeros(cu.n_items))
                    return (n_s + m * p_all) / max(n_s.sum() + m, 1e-12)

                rows.append({"counted": counted, "segments": name, "m": m, **cu.score(fn, with_user=True)})
                print(json.dumps(rows[-1]), flush=True)
    return {
        "dataset": args.dataset,
        "validation": _COLD_VALIDATION,
        "model": "segment popularity (n_sj + m p_j) / (N_s + m), segments from the users table",
        "age_edges": edges,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sweep")
    s.add_argument("--grid", default='{"weighting": ["centred", "binary"], "prior": [0, 1, 2]}', help="JSON: parameter -> values")
    s.add_argument("--cold-users", action="store_true", help="validate on users cut to 3 training ratings")
    s.add_argument("--rmse", action="store_true", help="also RMSE on the validation ratings")
    a = sub.add_parser("ablation")
    a.add_argument("--min-items", type=int, default=20)
    a.add_argument("--top-terms", type=int, default=20)
    f = sub.add_parser("affinity")
    f.add_argument("--betas", default="0,2,4,8,16", help="comma-separated weights of the learned affinity (0: popularity alone)")
    g = sub.add_parser("appeal")
    g.add_argument("--l2", type=float, default=1.0, help="L2 penalty on the standardized feature weights")
    g.add_argument("--year-edges", default="1970,1980,1990,1994,1996,1997", help="release-year bin edges (default: ML-100K's)")
    d = sub.add_parser("demographic")
    d.add_argument("--age-edges", default="18,25,35,45,56", help="age bin edges")
    d.add_argument("--shrink", default="100,1000,10000", help="comma-separated shrinkage m (ratings) towards the global shares")
    for p in (s, a, f, g, d):
        p.add_argument("--dataset", default="ml-latest-small")
        p.add_argument("--out", default="")
    args = ap.parse_args(argv)
    result = {"sweep": sweep, "ablation": ablation, "affinity": affinity, "appeal": appeal, "demographic": demographic}[args.cmd](args)
    tag = "_cold_users" if getattr(args, "cold_users", False) or args.cmd in ("affinity", "appeal", "demographic") else ""
    out = args.out or str(ROOT / "benchmarks" / "results" / f"content_{args.cmd}{tag}_{args.dataset}.json")
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
