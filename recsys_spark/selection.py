"""Model selection with declared criteria, a Pareto front, and a rationale written from the numbers.

The criteria are config keys (``[evaluate]``): the metric (``select_metric``;
ranking metrics are maximised, RMSE/MAE minimised), a cost budget
(``max_cost_s``: seconds of the model's predict stage, fit and predictions;
for the blend, its members' stages plus its own), a latency budget
(``max_recommend_s_per_1k_users``: seconds to recommend for 1,000 users,
measured in the predict stage; the blend's is its members' sum plus its own)
and a minimum catalogue coverage (``min_coverage``). Among the models within the constraints the most
accurate one is the *leader*; a cheaper model whose paired difference to the
leader is not significant (either Holm-adjusted p-value, t-test or Wilcoxon, at
least ``alpha``) is preferred to it, the cheapest such one is selected, and
the rationale says so. The Pareto front is over (metric, cost, coverage).

Pure Python on the evaluate stage's numbers: the per-unit values come from the
same collection the significance tests use.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recsys_spark import significance as sig
from recsys_spark.evaluate import LOWER_IS_BETTER


def pareto_front(points: dict[str, tuple[float, float, float]], lower_is_better: bool) -> list[str]:
    """Models not dominated on (metric, cost, coverage): cost lower, coverage higher, metric per its direction."""

    def key(p: tuple[float, float, float]) -> tuple[float, float, float]:
        m, cost, cov = p
        return (m if lower_is_better else -m, cost, -cov)  # all three: lower is better

    front = []
    for name, p in points.items():
        kp = key(p)
        dominated = any(
            all(a <= b for a, b in zip(key(q), kp, strict=True)) and key(q) != kp for other, q in points.items() if other != name
        )
        if not dominated:
            front.append(name)
    return front


def select(
    metric: str, scores: dict[str, float], costs: dict[str, float], coverage: dict[str, float],
    values: dict[str, np.ndarray], users: np.ndarray | None = None, max_cost_s: float = 0.0,
    min_coverage: float = 0.0, alpha: float = 0.05, latency: dict[str, float] | None = None,
    max_latency: float = 0.0,
) -> dict[str, Any]:  # fmt: skip
    """The selected model, the leader, the models tied with it, the Pareto front and the rationale.

    ``values[model]``: per-user values of ``metric`` (or per-rating errors, with
    ``users`` the rating's user, for RMSE), all in the same order.  ``latency``:
    seconds to recommend for 1,000 users, per model; ``max_latency`` its budget (0: none).
    """
    lower = metric in LOWER_IS_BETTER
    latency = latency or {}
    excluded = {}
    for m in scores:
        if max_cost_s and costs[m] > max_cost_s:
            excluded[m] = f"cost {costs[m]:.0f} s over the budget evaluate.max_cost_s = {max_cost_s:g} s"
        elif max_latency and m in latency and latency[m] > max_latency:
            excluded[m] = (
                f"{latency[m]:.2f} s to recommend for 1,000 users, over evaluate.max_recommend_s_per_1k_users = {max_latency:g} s"
            )
        elif min_coverage and coverage.get(m, 0.0) < min_coverage:
            excluded[m] = f"coverage {coverage.get(m, 0.0):.3f} under evaluate.min_coverage = {min_coverage:g}"
    eligible = [m for m in scores if m not in excluded]
    if not eligible:
        raise ValueError(f"evaluate: no model meets the selection constraints ({'; '.join(f'{m}: {w}' for m, w in excluded.items())})")
    leader = (min if lower else max)(eligible, key=lambda m: scores[m])
    cheaper = [m for m in eligible if m != leader and costs[m] < costs[leader]]
    tests = sig.compare_all({m: values[m] for m in [leader, *cheaper]}, [leader], higher_is_better=not lower, users=users)
    tied = {r["model"]: r for r in tests if min(r["t_p_holm"], r["wilcoxon_p_holm"]) >= alpha}
    selected = min([leader, *tied], key=lambda m: (costs[m], m != leader))
    front = pareto_front({m: (scores[m], costs[m], coverage.get(m, 0.0)) for m in eligible}, lower)
    return {
        "metric": metric, "selected": selected, "leader": leader, "tied_with_leader": sorted(tied),
        "excluded": excluded, "pareto_front": front, "costs_s": costs, "tests_against_leader": tests,
        "latency_s_per_1k_users": latency,
        "rationale": rationale(metric, selected, leader, scores, costs, coverage, tests, excluded, front, alpha, latency, max_latency),
    }  # fmt: skip


def rationale(
    metric: str, selected: str, leader: str, scores: dict[str, float], costs: dict[str, float], coverage: dict[str, float],
    tests: list[dict[str, Any]], excluded: dict[str, str], front: list[str], alpha: float,
    latency: dict[str, float] | None = None, max_latency: float = 0.0,
) -> str:  # fmt: skip
    """The choice in sentences, every claim with its number."""
    by = {r["model"]: r for r in tests}

    def diff(m: str) -> str:
        r = by[m]
        p = max(r["t_p_holm"], r["wilcoxon_p_holm"])
        return f"{r['diff']:+.4f} [{r['ci95_lo']:+.4f}, {r['ci95_hi']:+.4f}] in {leader}'s favour, Holm p {p:.2g}"

    s = scores
    lines = [
        f"{selected} is selected by {metric}: {s[selected]:.4f}, "
        + (f"coverage {coverage[selected]:.3f}, " if selected in coverage else "")
        + f"{costs[selected]:.0f} s to fit and predict"
        + (f", {latency[selected]:.2f} s to recommend for 1,000 users" if latency and selected in latency else "")
        + (f" (within the budget of {max_latency:g} s)" if max_latency else "")
        + "."
    ]
    if selected != leader:
        ratio = costs[leader] / max(costs[selected], 1e-9)
        lines.append(
            f"{leader} scores {s[leader]:.4f} ({diff(selected)}): not significant at {alpha:g}, "
            f"and it takes {costs[leader]:.0f} s ({ratio:.1f}x), so the cheaper model is preferred."
        )
    else:
        runner = [m for m in by if max(by[m]["t_p_holm"], by[m]["wilcoxon_p_holm"]) < alpha]
        if runner:
            r = max(runner, key=lambda m: s[m]) if metric not in LOWER_IS_BETTER else min(runner, key=lambda m: s[m])
            lines.append(
                f"The best cheaper model, {r}, scores {s[r]:.4f} ({diff(r)}): {selected}'s lead is significant, "
                f"worth {costs[selected] / max(costs[r], 1e-9):.1f}x its cost."
            )
        else:
            lines.append("No model is cheaper than it.")
    more = [m for m in front if m not in (selected, leader)]
    if more:
        listed = ", ".join(f"{m} ({s[m]:.4f}, {costs[m]:.0f} s)" for m in more)
        lines.append(f"Also on the Pareto front (metric, cost, coverage): {listed}.")
    for m, why in excluded.items():
        lines.append(f"{m} ({s[m]:.4f}) is not eligible: {why}.")
    return " ".join(lines)
