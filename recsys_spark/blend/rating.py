"""Rating blends fitted on a level-1 frame: voting, NNLS, ridge, FWLS, segment weights, the switching hybrid."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import Column
from pyspark.sql import functions as F

from recsys_spark.blend.level1 import CONTEXT, BlendError, _p, _s
from recsys_spark.schemas import COL_RATING, COL_USER

log = logging.getLogger(__name__)


RATING_METHODS = ("mean", "median", "nnls", "ridge", "fwls", "segment", "switch")
ROUTES = ("cold item", "light user", "heavy user", "other")


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
