"""A numpy re-implementation of the generator's selection by taste, for fast what-ifs.

    .venv/bin/python benchmarks/generated_sampler_sim.py \\
        --out benchmarks/results/studies/generated/sampler-sim.json

Draws users and items like ``recsys_spark.generate`` (log-normal activity on top
of 20 ratings, rank-8 factors leaning to a genre direction, a Zipf pool of
popularity draws ``candidates`` times larger than needed, de-duplicated, then
the top ``n_r`` by ``taste * p.q - a * log(1 + rank) + Gumbel``), with numpy's
generator instead of hashed ids, so its figures match the Spark generator's in
distribution, not row for row.  Reports the item-popularity Gini, ratings per
user and popularity's NDCG@10 on a per-user 75/25 split.  Used to look for
settings that give a real Gini with a real personalisation ratio
(docs/studies/generated-data.md); ``mix`` adds a uniform share to the pool.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

CASES = [  # (label, settings): the what-ifs docs/studies/generated-data.md cites
    {"s_pool": 0.9, "a": 0.3, "taste": 2.0},
    {"s_pool": 0.9, "a": 0.5, "taste": 3.0},
    {"s_pool": 0.9, "a": 0.7, "taste": 3.0},
    {"n_items": 3000, "a": 0.3, "taste": 3.0},
    {"n_items": 3000, "a": 0.8, "taste": 3.0},
    {"a": 1.2, "taste": 3.0, "candidates": 6},
    {"n_items": 3000, "a": 1.2, "taste": 4.0, "candidates": 6},
    {"a": 1.2, "taste": 6.0, "candidates": 6},
    {"a": 1.6, "taste": 8.0, "candidates": 6},
    {"n_items": 3000, "a": 1.2, "taste": 6.0, "candidates": 6},
    {"n_items": 3000, "a": 1.6, "taste": 8.0, "candidates": 8},
    {"s_pool": 1.3, "a": 0.0, "taste": 3.0, "mix": 0.1},
    {"s_pool": 1.5, "a": 0.0, "taste": 3.0, "mix": 0.1},
    {"s_pool": 1.5, "a": 0.0, "taste": 4.0, "mix": 0.05, "candidates": 4},
    {"n_items": 3000, "s_pool": 1.3, "a": 0.0, "taste": 3.0, "mix": 0.1},
]


def gini(x: np.ndarray) -> float:
    x = np.sort(np.asarray(x, dtype=np.float64))
    n = len(x)
    return float((2 * np.arange(1, n + 1) - n - 1).dot(x) / (n * x.sum()))


def simulate(n_users=800, n_items=1500, n_ratings=100_000, rank=8, activity_sigma=1.25, s_pool=0.9, a=0.3,
             taste=2.0, candidates=3.0, mix=0.0, seed=0) -> dict[str, float]:  # fmt: skip
    rng = np.random.default_rng(seed)
    sd = (0.6 / rank) ** 0.25
    genre = rng.integers(0, 18, n_items)
    q = (rng.normal(0, sd, (n_items, rank)) + rng.normal(0, sd, (18, rank))[genre]) * 0.5**0.5
    item_of_rank = rng.permutation(n_items)
    rank_of = np.empty(n_items, int)
    rank_of[item_of_rank] = np.arange(n_items)
    w = np.exp(rng.normal(size=n_users) * activity_sigma)
    n_r = np.minimum(20 + w / w.sum() * (n_ratings - 20 * n_users), n_items // 2).astype(int)
    p = rng.normal(0, sd, (n_users, rank))
    e = 1 - s_pool
    chosen = []
    for u in range(n_users):
        d = int(n_r[u] * (1.2 + 4 * n_r[u] / n_items) * candidates + 10)
        x = rng.random(d)
        r0 = (1 + x * (n_items**e - 1)) ** (1 / e) if abs(e) > 1e-9 else n_items**x
        rk = np.clip(np.floor(r0).astype(int) - 1, 0, n_items - 1)
        uni = rng.random(d) < mix
        rk[uni] = rng.integers(0, n_items, uni.sum())
        pool = np.unique(item_of_rank[rk])
        key = taste * (q[pool] @ p[u]) - a * np.log1p(rank_of[pool]) + rng.gumbel(size=len(pool))
        chosen.append(pool[np.argsort(-key)[: n_r[u]]])
    counts = np.bincount(np.concatenate(chosen), minlength=n_items)
    train, test = [], []
    for c in chosen:
        c = rng.permutation(c)
        m = int(round(len(c) * 0.75))
        train.append(c[:m])
        test.append(c[m:])
    order = np.argsort(-np.bincount(np.concatenate(train), minlength=n_items), kind="stable")
    disc = 1 / np.log2(np.arange(2, 12))
    ndcg = []
    for tr, te in zip(train, test, strict=True):
        seen, rel = set(tr.tolist()), set(te.tolist())
        top = [i for i in order[: len(seen) + 11] if i not in seen][:10]
        hits = np.array([i in rel for i in top])
        ndcg.append(disc[hits].sum() / disc[: min(len(rel), 10)].sum())
    sizes = np.array([len(c) for c in chosen])
    return {
        "item_gini": round(gini(counts[counts > 0]), 3),
        "ratings_per_user_median": float(np.median(sizes)),
        "ratings_per_user_p90": float(np.percentile(sizes, 90)),
        "popularity_ndcg@10": round(float(np.mean(ndcg)), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out")
    args = ap.parse_args()
    rows = [{"settings": case, **simulate(**case)} for case in CASES]
    text = json.dumps({"defaults": "n_users 800, n_items 1500, 100000 ratings, rank 8, activity_sigma 1.25", "runs": rows}, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
