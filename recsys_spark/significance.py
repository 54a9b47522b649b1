"""Paired significance tests between models on the same test part, with Holm's correction.

Two models are compared on the same units: per-user metric values for the
ranking metrics (a user's NDCG@k under model A and under model B), and
per-rating squared errors for RMSE. For each pair the report gives

- the difference (``a - b``; for RMSE ``RMSE(b) - RMSE(a)``, so that a positive
  value always means ``a`` is better) and a seeded percentile bootstrap 95%
  interval, resampling users (with all their rows for RMSE);
- the two-sided paired t-test and Wilcoxon signed-rank p-values (``scipy.stats``;
  Wilcoxon drops zero differences, and all-zero differences give p = 1);
- Holm's step-down adjusted p-value over the comparisons made together
  (:func:`holm`), which controls the family-wise error rate.

Pure numpy/scipy on arrays the caller collected; nothing here touches Spark.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from recsys_spark import metrics as M


def holm(pvalues: list[float] | np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the input order.

    Sorted ascending, the i-th smallest (0-based) of ``m`` p-values becomes
    ``max_{j<=i} min(1, (m - j) p_(j))``: reject where the adjusted value is
    below alpha.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1 or np.isnan(p).any() or (p < 0).any() or (p > 1).any():
        raise ValueError(f"holm needs p-values in [0, 1], got {p}")
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out


def _p_values(d: np.ndarray) -> tuple[float, float]:
    from scipy import stats

    d = np.asarray(d, dtype=np.float64)
    if len(d) < 2 or not np.any(d != 0):
        return 1.0, 1.0  # no difference at all (or one unit): nothing to test
    with warnings.catch_warnings():  # nearly constant differences: scipy warns of precision loss, p is ~0 all the same
        warnings.simplefilter("ignore", RuntimeWarning)
        if np.all(d == d[0]):
            t_p = 0.0  # a constant non-zero difference: zero variance, the t statistic is infinite
        else:
            t_p = float(stats.ttest_rel(d, np.zeros_like(d)).pvalue)
        w_p = float(stats.wilcoxon(d, zero_method="wilcox").pvalue)
    return t_p, w_p


def paired_metric(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 42) -> dict[str, Any]:
    """Per-user values of a metric where higher is better, two models on the same users (same order)."""
    res = dict(M.paired_bootstrap(a, b, n_boot, seed))
    res["t_p"], res["wilcoxon_p"] = _p_values(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    return res


def paired_rmse(users: np.ndarray, err_a: np.ndarray, err_b: np.ndarray, n_boot: int = 2000, seed: int = 42) -> dict[str, Any]:
    """``RMSE(b) - RMSE(a)`` with an interval over users, and the tests on per-rating squared errors."""
    res = dict(M.paired_rmse_bootstrap(users, err_a, err_b, n_boot, seed))
    sq = np.asarray(err_b, dtype=np.float64) ** 2 - np.asarray(err_a, dtype=np.float64) ** 2
    res["t_p"], res["wilcoxon_p"] = _p_values(sq)
    return res


def compare_all(
    values: dict[str, np.ndarray], references: list[str], higher_is_better: bool = True,
    users: np.ndarray | None = None, n_boot: int = 2000, seed: int = 42,
) -> list[dict[str, Any]]:  # fmt: skip
    """Every reference against every other model, Holm-adjusted over all the comparisons made.

    ``values[model]``: per-user metric values (or, with ``users`` given,
    per-rating errors for RMSE), all in the same order. Each row:
    ``{reference, model, diff, ci95_lo, ci95_hi, t_p, wilcoxon_p, t_p_holm,
    wilcoxon_p_holm}`` where ``diff > 0`` means the reference is better.
    """
    rows = []
    done = set()
    for ref in references:
        for other in values:
            if other == ref or (other, ref) in done or (ref, other) in done:
                continue
            done.add((ref, other))
            if users is not None:
                res = paired_rmse(users, values[ref], values[other], n_boot, seed)
            else:
                a, b = values[ref], values[other]
                res = paired_metric(a, b, n_boot, seed) if higher_is_better else paired_metric(b, a, n_boot, seed)
            rows.append({"reference": ref, "model": other, **res})
    for key in ("t_p", "wilcoxon_p"):
        if rows:
            for row, adj in zip(rows, holm([r[key] for r in rows]), strict=True):
                row[f"{key}_holm"] = float(adj)
    return rows
