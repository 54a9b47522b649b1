"""GD, SGD and ALS on one objective: training and validation RMSE per epoch.

The objective is the plain (unbiased) regularized factorization MLlib's ALS
minimises (ALS-WR: the penalty of each factor scaled by its rating count)::

    sum_(u,i) (r_ui - p_u.q_i)^2 + reg * (sum_u n_u |p_u|^2 + sum_i n_i |q_i|^2)

``SVD(biased=False)`` minimises exactly this with ``optimizer="sgd"`` or
``"gd"`` (with the bold driver: a fixed step that suits ML-100K diverges on
ml-latest-small; a rejected step leaves the iterate where it was, so that
epoch repeats the kept point's errors); ALS's curve comes from refitting
MLlib with ``maxIter = 1..E`` (deterministic with a seed, so fit ``e`` is
iterate ``e``).  The validation
pairs are restricted to users and items present in training, the same set
for the three.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from pyspark.ml.recommendation import ALS as MLlibALS
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_spark.factorization.svd import SVD
from recsys_spark.schemas import COL_ITEM, COL_PREDICTION, COL_RATING, COL_USER

log = logging.getLogger(__name__)


def convergence(
    train: DataFrame, valid: DataFrame, *, rank: int = 20, reg: float = 0.05, epochs: int = 10,
    lr_sgd: float = 0.01, lr_gd: float = 0.5, momentum: float = 0.9, seed: int = 42,
) -> dict[str, list[dict[str, float]]]:  # fmt: skip
    """``{"sgd"|"gd"|"als": [{"epoch", "train_rmse", "valid_rmse"}, ...]}`` (epoch 0 = the initial factors for GD/SGD)."""
    valid = valid.join(train.select(COL_USER).distinct(), COL_USER, "left_semi").join(
        train.select(COL_ITEM).distinct(), COL_ITEM, "left_semi"
    )
    out: dict[str, list[dict[str, float]]] = {}
    for opt, lr in (("sgd", lr_sgd), ("gd", lr_gd)):
        est = SVD(rank=rank, n_epochs=epochs, lr=lr, reg=reg, optimizer=opt, momentum=momentum, biased=False, seed=seed,
                  bold_driver=opt == "gd", name=f"conv_{opt}")  # fmt: skip
        model = est.fit(train, valid=valid, history=True)
        out[opt] = _iterates(model.info["history"])
        log.info("%s: train %.4f valid %.4f after %d epochs", opt, out[opt][-1]["train_rmse"], out[opt][-1]["valid_rmse"], epochs)
    ratings = train.select(COL_USER, COL_ITEM, F.col(COL_RATING).cast("float")).persist()
    out["als"] = []
    for e in range(1, epochs + 1):
        m = MLlibALS(rank=rank, maxIter=e, regParam=reg, seed=seed, userCol=COL_USER, itemCol=COL_ITEM, ratingCol=COL_RATING).fit(ratings)
        out["als"].append({"epoch": e, "train_rmse": _rmse(m.transform(ratings)), "valid_rmse": _rmse(m.transform(valid))})
    log.info("als: train %.4f valid %.4f after %d iterations", out["als"][-1]["train_rmse"], out["als"][-1]["valid_rmse"], epochs)
    ratings.unpersist()
    return out


def _iterates(history: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Per epoch, the errors of the iterate: a point the bold driver rejected is replaced by the kept one."""
    rows, kept = [], None
    for h in history:
        if h.get("accepted", 1.0):
            kept = h
        rows.append({"epoch": h["epoch"], "train_rmse": kept["train_rmse"], "valid_rmse": kept["valid_rmse"]})
    return rows


def _rmse(pred: DataFrame) -> float:
    v = pred.agg(F.avg((F.col(COL_RATING) - F.col(COL_PREDICTION)) ** 2)).first()[0]
    return math.sqrt(v) if v is not None else float("nan")


def plot_convergence(curves: dict[str, list[dict[str, Any]]], path: str, title: str = "") -> str:
    """A PNG at ``path`` (on this machine) of :func:`convergence_figure`."""
    import matplotlib.pyplot as plt

    fig = convergence_figure(curves, title)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    log.info("wrote %s", path)
    return path


def convergence_figure(curves: dict[str, list[dict[str, Any]]], title: str = "") -> Any:
    """Training and validation RMSE by epoch of each optimiser (a matplotlib figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=False)
    for name, rows in curves.items():
        for ax, key in zip(axes, ("train_rmse", "valid_rmse"), strict=True):
            ax.plot([r["epoch"] for r in rows], [r[key] for r in rows], marker="o", ms=3, label=name.upper())
    for ax, key in zip(axes, ("training RMSE", "validation RMSE"), strict=True):
        ax.set_xlabel("epoch (ALS: iteration)")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title or "GD vs SGD vs ALS, same objective")
    fig.tight_layout()
    return fig
