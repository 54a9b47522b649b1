"""Ensembles of fitted models: the level-1 table, rating blends and top-N rank fusion.

Level 1.  Every member predicts the validation part from a fit on the
training part only, so a blender that learns from those predictions never
sees a rating its members trained on; the test part is predicted by members
refitted on train + valid, and the blender's weights, learned on valid, are
applied to those.  :func:`level1` joins the members' rating predictions on
``(user_idx, item_idx)`` into one wide row per pair: ``p_<model>`` (the
prediction), ``s_<model>`` (its ``source``) and context features computed
from the ratings the members were fitted on (:data:`CONTEXT`).

Rating blends (:data:`RATING_METHODS`), fitted on the validation level-1
table collected to the driver (``max_rows`` caps it, by a seeded hash of the
user so the sample is whole users), chosen by K-fold cross-validation over
validation users (never on test):

* ``mean`` / ``median`` of the members' predictions (no fit);
* ``nnls``: non-negative weights plus a free intercept (``scipy.optimize.nnls``
  on centred data);
* ``ridge``: unconstrained linear weights with an L2 penalty;
* ``fwls``: feature-weighted linear stacking (Sill et al. 2009): each member's
  weight is linear in the context features, i.e. ridge over
  ``p_m * [1, f_1 .. f_c]``;
* ``segment``: NNLS weights per user-activity segment (quartiles of the
  user's training ratings), the global NNLS weights where a segment has too
  few rows: weights that depend on who is asking;
* ``switch``: a switching hybrid.  Each row takes a route, in this order:
  ``cold item`` (the item has no rating in what the members were fitted
  on), ``light user`` / ``heavy user`` (below the first / from the third
  quartile of user activity), ``other``.  Each route holds a chain of
  members, ranked by their validation RMSE on that route's rows; the first
  member of the chain that answered the row itself (its ``source`` is its
  usual one, not a fallback) answers, and the row's ``source`` says which
  and why: ``switch:item_knn (light user; als fell back)``.

A member that did not predict some pairs of a part is counted, and
:func:`fill_missing` lets a complete member answer those rows (``source``
``missing->bias``), so no blend sees a NaN or drops a row.

Top-N fusion (:data:`TOPN_METHODS`): each member's top-k list on the same
users; ``rrf`` (reciprocal rank, ``sum_m 1 / (60 + rank_m)``) and ``borda``
(``sum_m (k + 1 - rank_m)``) over a member subset, chosen on validation by
greedy forward selection on NDCG@k (numpy, over a hash sample of users).
Every fused item records its ``contributors``: the members whose list held it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from recsys_spark.schemas import COL_ITEM, COL_PREDICTION, COL_RANK, COL_RATING, COL_SCORE, COL_SOURCE, COL_TIMESTAMP, COL_USER

log = logging.getLogger(__name__)

CONTEXT = ("log_n_user", "log_n_item", "user_var", "user_days", "item_days")
RATING_METHODS = ("mean", "median", "nnls", "ridge", "fwls", "segment", "switch")
ROUTES = ("cold item", "light user", "heavy user", "other")
FALLBACK_ORDER = ("bias", "global_mean", "item_mean", "user_mean")  # who answers a member's missing rows
TOPN_METHODS = ("rrf", "borda")
RRF_K = 60
DAY = 86_400


class BlendError(ValueError):
    """A blend that cannot be built from what it was given (names the model and the part)."""


def _p(name: str) -> str:
    return f"p_{name}"


def _s(name: str) -> str:
    return f"s_{name}"


# -- level 1 -------------------------------------------------------------------------------------
def context_tables(train: DataFrame) -> tuple[DataFrame, DataFrame, int]:
    """Per-user and per-item context from the ratings the members were fitted on, and the last timestamp."""
    has_ts = COL_TIMESTAMP in train.columns
    ts = F.col(COL_TIMESTAMP) if has_ts else F.lit(None).cast("long")
    users = train.groupBy(COL_USER).agg(
        F.log1p(F.count("*")).alias("log_n_user"),
        F.coalesce(F.var_pop(COL_RATING), F.lit(0.0)).alias("user_var"),
        F.min(ts).alias("_u_first"),
    )
    items = train.groupBy(COL_ITEM).agg(F.log1p(F.count("*")).alias("log_n_item"), F.min(ts).alias("_i_first"))
    last = train.agg(F.max(ts)).first()[0] if has_ts else None  # a scalar
    return users, items, int(last or 0)


def level1(
    members: Mapping[str, DataFrame], pairs: DataFrame, train: DataFrame,
) -> DataFrame:  # fmt: skip
    """One row per pair of ``pairs``: each member's prediction and source, and the context features.

    ``members`` maps a model name to its rating predictions of exactly these
    pairs (``user_idx, item_idx, prediction, source``); a pair a member did not
    predict is an error naming the member (the predict stage accounts for every row).
    """
    users, items, last = context_tables(train)
    keys = [COL_USER, COL_ITEM]
    extra = [c for c in (COL_RATING, COL_TIMESTAMP) if c in pairs.columns]
    out = pairs.select(*keys, *extra)
    for name, df in members.items():
        src = F.col(COL_SOURCE) if COL_SOURCE in df.columns else F.lit(name)
        out = out.join(df.select(*keys, F.col(COL_PREDICTION).alias(_p(name)), src.alias(_s(name))), keys, "left")
    at = F.col(COL_TIMESTAMP) if COL_TIMESTAMP in pairs.columns else F.lit(last)
    out = (
        out.join(users, COL_USER, "left")
        .join(items, COL_ITEM, "left")
        .withColumn("user_days", F.greatest(F.lit(0.0), (at - F.col("_u_first")) / DAY))
        .withColumn("item_days", F.greatest(F.lit(0.0), (at - F.col("_i_first")) / DAY))
        .drop("_u_first", "_i_first")
        .fillna(0.0, list(CONTEXT))
    )
    return out


def missing_counts(table: DataFrame, names: Sequence[str]) -> dict[str, int]:
    """Rows per member with no prediction."""
    row = table.agg(*[F.sum(F.col(_p(n)).isNull().cast("int")).alias(n) for n in names]).first()  # scalars
    return {n: int(row[n] or 0) for n in names}


def fill_missing(table: DataFrame, names: Sequence[str], part: str, fallback_value: float) -> tuple[DataFrame, dict[str, Any]]:
    """Rows a member did not predict, answered by a complete member (``source`` ``missing-><fallback>``); counted.

    The fallback is the first complete member of :data:`FALLBACK_ORDER`, else
    the first complete member, else ``fallback_value`` (the training mean).
    """
    missing = missing_counts(table, names)
    bad = {n: m for n, m in missing.items() if m}
    report: dict[str, Any] = {"missing": bad, "filled_by": None}
    if not bad:
        return table, report
    complete = [n for n in names if not missing[n]]
    fb = next((n for n in FALLBACK_ORDER if n in complete), complete[0] if complete else None)
    value = F.col(_p(fb)) if fb else F.lit(float(fallback_value))
    label = fb or "the training mean"
    for n in bad:
        table = table.withColumn(_s(n), F.when(F.col(_p(n)).isNull(), F.lit(f"missing->{label}")).otherwise(F.col(_s(n))))
        table = table.withColumn(_p(n), F.coalesce(F.col(_p(n)), value))
    report["filled_by"] = label
    log.warning("%s part: members without a prediction for some pairs: %s; %s answers those rows", part, bad, label)
    return table, report


def sample_users(table: DataFrame, max_rows: int, seed: int = 42) -> DataFrame:
    """Whole users, chosen by a seeded hash, so that about ``max_rows`` rows remain."""
    n = table.count()
    if n <= max_rows:
        return table
    share = max_rows / n
    h = (F.xxhash64(F.lit(seed), F.col(COL_USER)).bitwiseAND(F.lit((1 << 30) - 1)) / float(1 << 30))
    return table.where(h < share)


# -- rating blends ---------------------------------------------------------------------------
@dataclass
class RatingBlend:
    """A fitted rating blend: ``method``, members, and its coefficients (plain floats, JSON-ready)."""

    method: str
    members: list[str]
    intercept: float = 0.0
    weights: list[float] = field(default_factory=list)  # nnls, ridge: one per member
    fw: list[list[float]] = field(default_factory=list)  # fwls: per member, [1, context...] coefficients
    ctx_mean: list[float] = field(default_factory=list)
    ctx_sd: list[float] = field(default_factory=list)
    segments: list[float] = field(default_factory=list)  # segment: log_n_user cut points
    seg_weights: list[list[float]] = field(default_factory=list)  # segment: [intercept, w...] per segment
    chains: list[list[int]] = field(default_factory=list)  # switch: member indices per route (ROUTES order)
    primary: list[str] = field(default_factory=list)  # switch: each member's own source (else it fell back)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v or k in ("method", "members")}

    # numpy (fitting, cross-validation) ----------------------------------------
    def predict_np(self, frame: pd.DataFrame) -> np.ndarray:
        x = frame[[_p(n) for n in self.members]].to_numpy(np.float64)
        if self.method == "mean":
            return x.mean(axis=1)
        if self.method == "median":
            return np.median(x, axis=1)
        if self.method in ("nnls", "ridge"):
            return self.intercept + x @ np.asarray(self.weights)
        if self.method == "fwls":
            z = _fw_design(x, _ctx(frame, self.ctx_mean, self.ctx_sd))
            return self.intercept + z @ np.concatenate(self.fw)
        if self.method == "segment":
            seg = np.searchsorted(np.asarray(self.segments), frame["log_n_user"].to_numpy(), side="right")
            coef = np.asarray(self.seg_weights)[seg]
            return coef[:, 0] + (x * coef[:, 1:]).sum(axis=1)
        if self.method == "switch":
            return self.switch_np(frame)[0]
        raise BlendError(f"unknown rating blend {self.method!r}; use one of {', '.join(RATING_METHODS)}")

    def switch_np(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Switch: the prediction, the route and the answering member of each row."""
        x = frame[[_p(n) for n in self.members]].to_numpy(np.float64)
        route = _route_np(frame, self.segments)
        native = _native_np(frame, self.members, self.primary)
        out = np.full(len(frame), np.nan)
        who = np.full(len(frame), -1)
        for r, chain in enumerate(self.chains):
            at = route == r
            ans = np.full(at.sum(), chain[0])
            for m in reversed(chain):  # the first native member of the chain wins
                ans = np.where(native[at, m], m, ans)
            who[at] = ans
            out[at] = x[at][np.arange(at.sum()), ans]
        return out, route, who

    # Spark (applying to a level-1 table of any size) --------------------------
    def source_col(self) -> Column:
        """What answered each row: ``blend:<method>``, or the switch's route and member."""
        if self.method != "switch":
            return F.lit(f"blend:{self.method}")
        route = _route_col(self.segments)
        out = None
        for r, chain in enumerate(self.chains):
            val = None
            for pos in reversed(range(len(chain))):
                m = self.members[chain[pos]]
                skipped = [self.members[c] for c in chain[:pos]]
                why = ROUTES[r] + (f"; {', '.join(skipped)} fell back" if skipped else "")
                txt = F.lit(f"switch:{m} ({why})")
                if pos == len(chain) - 1:
                    first = self.members[chain[0]]
                    none = F.lit(f"switch:{first} ({ROUTES[r]}; every member fell back)")
                    val = F.when(_native_col(m, self.primary[chain[pos]]), txt).otherwise(none)
                else:
                    val = F.when(_native_col(m, self.primary[chain[pos]]), txt).otherwise(val)
            out = F.when(route == r, val) if out is None else out.when(route == r, val)
        return out

    def predict_col(self) -> Column:
        ps = [F.col(_p(n)) for n in self.members]
        if self.method == "mean":
            return sum(ps[1:], ps[0]) / len(ps)
        if self.method == "median":
            return _median_col(ps)
        if self.method in ("nnls", "ridge"):
            return F.lit(self.intercept) + sum((w * p for w, p in zip(self.weights, ps, strict=True)), F.lit(0.0))
        if self.method == "fwls":
            zs = [(F.col(c) - m) / s for c, m, s in zip(CONTEXT, self.ctx_mean, self.ctx_sd, strict=True)]
            terms = F.lit(self.intercept)
            for p, coef in zip(ps, self.fw, strict=True):
                terms = terms + p * (F.lit(coef[0]) + sum((c * z for c, z in zip(coef[1:], zs, strict=True)), F.lit(0.0)))
            return terms
        if self.method == "segment":
            seg = sum((F.when(F.col("log_n_user") >= cut, 1).otherwise(0) for cut in self.segments), F.lit(0))
            out = None
            for i, coef in enumerate(self.seg_weights):
                val = F.lit(coef[0]) + sum((w * p for w, p in zip(coef[1:], ps, strict=True)), F.lit(0.0))
                out = F.when(seg == i, val) if out is None else out.when(seg == i, val)
            return out
        if self.method == "switch":
            route = _route_col(self.segments)
            out = None
            for r, chain in enumerate(self.chains):
                val = F.col(_p(self.members[chain[0]]))
                for m in reversed(chain):
                    name = self.members[m]
                    val = F.when(_native_col(name, self.primary[m]), F.col(_p(name))).otherwise(val)
                out = F.when(route == r, val) if out is None else out.when(route == r, val)
            return out
        raise BlendError(f"unknown rating blend {self.method!r}; use one of {', '.join(RATING_METHODS)}")


def _route_np(frame: pd.DataFrame, cuts: Sequence[float]) -> np.ndarray:
    act = frame["log_n_user"].to_numpy(np.float64)
    cold = frame["log_n_item"].to_numpy(np.float64) <= 0
    return np.where(cold, 0, np.where(act < cuts[0], 1, np.where(act >= cuts[1], 2, 3)))


def _route_col(cuts: Sequence[float]) -> Column:
    return (
        F.when(F.col("log_n_item") <= 0, 0)
        .when(F.col("log_n_user") < cuts[0], 1)
        .when(F.col("log_n_user") >= cuts[1], 2)
        .otherwise(3)
    )


def _native_np(frame: pd.DataFrame, members: Sequence[str], primary: Sequence[str]) -> np.ndarray:
    """Whether each member answered each row itself (its source is its primary one)."""
    cols = []
    for n, src in zip(members, primary, strict=True):
        s = frame[_s(n)] if _s(n) in frame.columns else pd.Series([src] * len(frame), index=frame.index)
        cols.append((s.to_numpy() == src) & frame[_p(n)].notna().to_numpy())
    return np.column_stack(cols)


def _native_col(name: str, primary: str) -> Column:
    return (F.col(_s(name)) == F.lit(primary)) & F.col(_p(name)).isNotNull()


def _median_col(ps: list[Column]) -> Column:
    arr = F.array_sort(F.array(*ps))
    n = len(ps)
    if n % 2:
        return arr.getItem(n // 2)
    return (arr.getItem(n // 2 - 1) + arr.getItem(n // 2)) / 2


def _ctx(frame: pd.DataFrame, mean: Sequence[float], sd: Sequence[float]) -> np.ndarray:
    c = frame[list(CONTEXT)].to_numpy(np.float64)
    return (c - np.asarray(mean)) / np.asarray(sd)


def _fw_design(x: np.ndarray, ctx: np.ndarray) -> np.ndarray:
    """``p_m * [1, f_1..f_c]`` for every member m, member-major."""
    basis = np.hstack([np.ones((len(x), 1)), ctx])
    return np.hstack([x[:, [m]] * basis for m in range(x.shape[1])])


def _ridge(z: np.ndarray, y: np.ndarray, lam: float) -> tuple[float, np.ndarray]:
    """Ridge with a free intercept (centred), penalty ``lam * n`` on the coefficients."""
    zm, ym = z.mean(axis=0), y.mean()
    zc = z - zm
    a = zc.T @ zc + lam * len(y) * np.eye(z.shape[1])
    w = np.linalg.solve(a, zc.T @ (y - ym))
    return float(ym - zm @ w), w


def _nnls(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Non-negative weights, free intercept (on centred data)."""
    from scipy.optimize import nnls

    xm, ym = x.mean(axis=0), y.mean()
    w, _ = nnls(x - xm, y - ym)
    return float(ym - xm @ w), w


def fit_rating_blend(
    method: str, frame: pd.DataFrame, members: Sequence[str], ridge: float = 1e-3, min_segment_rows: int = 200,
) -> RatingBlend:  # fmt: skip
    """Fit ``method`` on a level-1 frame (``p_<member>`` columns, ``rating``, the context)."""
    members = list(members)
    if method in ("mean", "median"):
        return RatingBlend(method, members)
    x = frame[[_p(n) for n in members]].to_numpy(np.float64)
    y = frame[COL_RATING].to_numpy(np.float64)
    if method == "nnls":
        b, w = _nnls(x, y)
        return RatingBlend(method, members, b, [float(v) for v in w])
    if method == "ridge":
        b, w = _ridge(x, y, ridge)
        return RatingBlend(method, members, b, [float(v) for v in w])
    if method == "fwls":
        c = frame[list(CONTEXT)].to_numpy(np.float64)
        mean, sd = c.mean(axis=0), c.std(axis=0)
        sd[sd == 0] = 1.0
        b, w = _ridge(_fw_design(x, (c - mean) / sd), y, ridge)
        per = w.reshape(len(members), 1 + len(CONTEXT))
        return RatingBlend(method, members, b, fw=[[float(v) for v in row] for row in per],
                           ctx_mean=[float(v) for v in mean], ctx_sd=[float(v) for v in sd])  # fmt: skip
    if method == "segment":
        act = frame["log_n_user"].to_numpy(np.float64)
        cuts = [float(v) for v in np.unique(np.quantile(act, [0.25, 0.5, 0.75]))]
        seg = np.searchsorted(np.asarray(cuts), act, side="right")
        b0, w0 = _nnls(x, y)
        coefs = []
        for i in range(len(cuts) + 1):
            m = seg == i
            b, w = _nnls(x[m], y[m]) if m.sum() >= min_segment_rows else (b0, w0)
            coefs.append([b, *[float(v) for v in w]])
        return RatingBlend(method, members, segments=cuts, seg_weights=[[float(v) for v in c] for c in coefs])
    if method == "switch":
        return _fit_switch(frame, members, x, y, min_segment_rows)
    raise BlendError(f"unknown rating blend {method!r}; use one of {', '.join(RATING_METHODS)}")


def _fit_switch(frame: pd.DataFrame, members: list[str], x: np.ndarray, y: np.ndarray, min_rows: int,
                chain_length: int = 3) -> RatingBlend:  # fmt: skip
    """Per route, the members ranked by validation RMSE on the rows they answered themselves."""
    primary = []
    for n in members:
        src = frame[_s(n)] if _s(n) in frame.columns else pd.Series([n])
        src = src[~src.astype(str).str.startswith("missing->")]
        primary.append(str(src.mode().iloc[0]) if len(src) else n)
    act = frame["log_n_user"].to_numpy(np.float64)
    cuts = [float(v) for v in np.quantile(act, [0.25, 0.75])]
    route = _route_np(frame, cuts)
    native = _native_np(frame, members, primary)

    def ranking(rows: np.ndarray) -> list[int]:
        rmse = []
        for m in range(len(members)):
            ok = rows & native[:, m]
            rmse.append(float(np.sqrt(np.mean((x[ok, m] - y[ok]) ** 2))) if ok.sum() >= min_rows else np.inf)
        order = sorted(range(len(members)), key=lambda m: (rmse[m], m))
        return [m for m in order if np.isfinite(rmse[m])]

    overall = ranking(np.ones(len(frame), bool)) or list(range(len(members)))
    chains = []
    for r in range(len(ROUTES)):
        chain = ranking(route == r) or overall
        chains.append([*chain, *[m for m in overall if m not in chain]][:chain_length])
    return RatingBlend("switch", members, segments=cuts, chains=chains, primary=primary)


def user_folds(frame: pd.DataFrame, k: int, seed: int = 42) -> np.ndarray:
    """Fold of each row by its user (a seeded hash), so a user's rows stay together."""
    users = frame[COL_USER].to_numpy(np.int64)
    return ((users * 2654435761 + seed) % (1 << 32)) % k


def cv_rmse(method: str, frame: pd.DataFrame, members: Sequence[str], folds: int = 5, lo: float = -np.inf,
            hi: float = np.inf) -> float:  # fmt: skip
    """RMSE of ``method`` fitted on K-1 folds of validation users and scored on the held-out fold."""
    fold = user_folds(frame, folds)
    y = frame[COL_RATING].to_numpy(np.float64)
    err = np.empty(len(frame))
    for f in range(folds):
        held = fold == f
        if not held.any():
            continue
        blend = fit_rating_blend(method, frame[~held], members)
        err[held] = np.clip(blend.predict_np(frame[held]), lo, hi) - y[held]
    return float(np.sqrt(np.mean(err**2)))


def single_rmse(frame: pd.DataFrame, name: str, lo: float = -np.inf, hi: float = np.inf) -> float:
    y = frame[COL_RATING].to_numpy(np.float64)
    return float(np.sqrt(np.mean((np.clip(frame[_p(name)].to_numpy(np.float64), lo, hi) - y) ** 2)))


# -- top-N fusion -------------------------------------------------------------------------
def _weight(method: str, rank: np.ndarray | Column, k: int) -> Any:
    if method == "rrf":
        return 1.0 / (RRF_K + rank)
    if method == "borda":
        return k + 1 - rank
    raise BlendError(f"unknown top-N blend {method!r}; use one of {', '.join(TOPN_METHODS)}")


def fuse(lists: Mapping[str, DataFrame], method: str, k: int, weights: Mapping[str, float] | None = None) -> DataFrame:
    """Fused top-``k`` per user from the members' ranked lists (``user_idx, item_idx, rank``).

    ``score`` is the weighted fusion score; ``contributors`` the members whose
    list held the item, best-ranked first; ties broken by item index.
    """
    parts = [
        df.select(COL_USER, COL_ITEM, F.col(COL_RANK).cast("double").alias("_r"), F.lit(name).alias("_m"))
        .withColumn("_w", F.lit(float((weights or {}).get(name, 1.0))) * _weight(method, F.col("_r"), k))
        for name, df in lists.items()
    ]
    union = parts[0]
    for p in parts[1:]:
        union = union.unionByName(p)
    agg = union.groupBy(COL_USER, COL_ITEM).agg(
        F.sum("_w").alias(COL_SCORE),
        F.transform(F.array_sort(F.collect_list(F.struct("_r", "_m"))), lambda s: s["_m"]).alias("contributors"),
    )
    w = Window.partitionBy(COL_USER).orderBy(F.desc(COL_SCORE), F.asc(COL_ITEM))
    return agg.withColumn(COL_RANK, F.row_number().over(w)).where(F.col(COL_RANK) <= k)


def _ndcg_np(lists: dict[str, pd.DataFrame], relevant: dict[int, set[int]], members: Sequence[str], method: str, k: int) -> float:
    """Mean NDCG@k over the users of ``relevant`` of the fusion of ``members`` (binary relevance)."""
    frames = [lists[m].assign(_w=_weight(method, lists[m][COL_RANK].to_numpy(np.float64), k)) for m in members]
    u = pd.concat(frames, ignore_index=True).groupby([COL_USER, COL_ITEM], sort=False)["_w"].sum().reset_index()
    u = u.sort_values([COL_USER, "_w", COL_ITEM], ascending=[True, False, True])
    u["_rank"] = u.groupby(COL_USER).cumcount() + 1
    u = u[u["_rank"] <= k]
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    total = 0.0
    got = {user: grp for user, grp in u.groupby(COL_USER)}
    for user, rel in relevant.items():
        ideal = disc[: min(len(rel), k)].sum()
        grp = got.get(user)
        if grp is None or ideal == 0:
            continue
        hits = np.fromiter((i in rel for i in grp[COL_ITEM].to_numpy()), bool, len(grp))
        total += disc[grp["_rank"].to_numpy()[hits] - 1].sum() / ideal
    return total / max(1, len(relevant))


def select_fusion(
    lists: dict[str, pd.DataFrame], relevant: dict[int, set[int]], k: int, max_members: int = 4,
) -> dict[str, Any]:  # fmt: skip
    """Greedy forward selection of members for each fusion method by validation NDCG@k.

    Starts from the best single member and adds the member that raises NDCG
    most, while it does (at most ``max_members``).  Returns every method's path
    and the best (method, members) overall; a single member is also a candidate.
    """
    singles = {m: _ndcg_np(lists, relevant, [m], "rrf", k) for m in lists}
    best_single = max(singles, key=lambda m: (singles[m], m))
    out: dict[str, Any] = {"singles": singles, "methods": {}}
    best = ("single", [best_single], singles[best_single])
    for method in TOPN_METHODS:
        chosen, score = [best_single], singles[best_single]
        path = [(list(chosen), score)]
        while len(chosen) < max_members:
            trials = {m: _ndcg_np(lists, relevant, [*chosen, m], method, k) for m in lists if m not in chosen}
            if not trials:
                break
            m, s = max(trials.items(), key=lambda kv: (kv[1], kv[0]))
            if s <= score:
                break
            chosen, score = [*chosen, m], s
            path.append((list(chosen), score))
        out["methods"][method] = {"members": chosen, "ndcg": score, "path": path}
        if score > best[2]:
            best = (method, chosen, score)
    out["chosen"] = {"method": best[0], "members": best[1], "ndcg": best[2]}
    return out
