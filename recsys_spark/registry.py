"""Models by name: each family adds itself with one entry.

``build("bias", scale)`` returns an estimator configured from
``conf/models/bias.toml`` (its ``[params]`` table) with any overrides applied.
Unknown names and unknown parameters fail naming the model and the key.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recsys_spark.baselines import BiasBaseline, GlobalMean, ItemMean, Popularity, UserMean
from recsys_spark.content import ContentBased, SideData
from recsys_spark.factorization.als import ALS
from recsys_spark.factorization.impute import SVDImpute
from recsys_spark.factorization.svd import NMFMU, SVD, SVDpp
from recsys_spark.neighborhood import KNN
from recsys_spark.recommender import Recommender, Scale

MODELS_DIR = Path(__file__).resolve().parents[1] / "conf" / "models"

# name -> (factory(scale, **params), task): task says which protocols it serves
REGISTRY: dict[str, tuple[Callable[..., Recommender], str]] = {
    "global_mean": (lambda scale, **p: GlobalMean(scale=scale, **p), "rating+topn"),
    "user_mean": (lambda scale, **p: UserMean(scale=scale, **p), "rating+topn"),
    "item_mean": (lambda scale, **p: ItemMean(scale=scale, **p), "rating+topn"),
    "popularity": (lambda scale, **p: Popularity(scale=scale, name="popularity", **p), "rating+topn"),
    "popularity_mean": (lambda scale, **p: Popularity(scale=scale, name="popularity_mean", **p), "rating+topn"),
    "bias": (lambda scale, **p: BiasBaseline(scale=scale, **p), "rating+topn"),
    "item_knn": (lambda scale, **p: KNN(scale=scale, name="item_knn", user_based=False, **p), "rating+topn"),
    "user_knn": (lambda scale, **p: KNN(scale=scale, name="user_knn", user_based=True, **p), "rating+topn"),
    "als": (lambda scale, **p: ALS(scale=scale, name="als", **p), "rating+topn"),
    "als_implicit": (lambda scale, **p: ALS(scale=scale, name="als_implicit", implicit_prefs=True, **p), "topn"),
    "nmf": (lambda scale, **p: ALS(scale=scale, name="nmf", nonnegative=True, **p), "rating+topn"),
    "nmf_mu": (lambda scale, **p: NMFMU(scale=scale, name="nmf_mu", **p), "rating+topn"),
    "svd": (lambda scale, **p: SVD(scale=scale, name="svd", optimizer="sgd", **p), "rating+topn"),
    "svd_gd": (lambda scale, **p: SVD(scale=scale, name="svd_gd", optimizer="gd", **p), "rating+topn"),
    "svdpp": (lambda scale, **p: SVDpp(scale=scale, name="svdpp", **p), "rating+topn"),
    "svdpp_time": (lambda scale, **p: SVDpp(scale=scale, name="svdpp_time", **{"time_bins": 30, **p}), "rating+topn"),
    "svd_impute": (lambda scale, **p: SVDImpute(scale=scale, name="svd_impute", **p), "rating+topn"),
    "content": (lambda scale, **p: ContentBased(scale=scale, name="content", **p), "rating+topn"),
    "content_hybrid": (lambda scale, **p: ContentBased(scale=scale, name="content_hybrid", **{"features": "hybrid", **p}), "rating+topn"),
}




def _deep(name: str, kind: str, **fixed: Any) -> Callable[..., Recommender]:
    """Deep models import torch only when built (the ``deep`` extra)."""

    def factory(scale: Scale, **p: Any) -> Recommender:
        from recsys_spark.torch.recommender import DeepRecommender

        return DeepRecommender(scale=scale, name=name, kind=kind, **{**fixed, **p})

    factory.deep = True  # type: ignore[attr-defined]
    return factory


def is_deep(name: str) -> bool:
    """Whether ``name`` is a PyTorch model (trained on exported Parquet; needs the ``deep`` extra)."""
    return name in REGISTRY and bool(getattr(REGISTRY[name][0], "deep", False))


REGISTRY.update({
    "gmf": (_deep("gmf", "gmf"), "topn"),
    "mlp": (_deep("mlp", "mlp"), "topn"),
    "neumf": (_deep("neumf", "neumf"), "topn"),
    "neumf_explicit": (_deep("neumf_explicit", "neumf", explicit=True), "rating+topn"),
    "autorec": (_deep("autorec", "autorec"), "rating+topn"),
    "cdae": (_deep("cdae", "cdae"), "topn"),
})  # fmt: skip


def register(name: str, factory: Callable[..., Recommender], task: str = "rating+topn") -> None:
    REGISTRY[name] = (factory, task)


def model_params(name: str, models_dir: Path = MODELS_DIR) -> dict[str, Any]:
    """The tuned defaults of ``name`` from ``conf/models/<name>.toml`` ({} when absent)."""
    path = models_dir / f"{name}.toml"
    if not path.is_file():
        return {}
    data = tomllib.loads(path.read_text())
    unknown = set(data) - {"params"}
    if unknown:
        raise ValueError(f"{path}: unknown table(s) {sorted(unknown)}; parameters go under [params]")
    return dict(data.get("params", {}))


def build(
    name: str, scale: Scale, overrides: dict[str, Any] | None = None, models_dir: Path = MODELS_DIR, side: SideData | None = None,
) -> Recommender:  # fmt: skip
    """The estimator ``name`` with its tuned defaults; ``side`` goes to models that read item side data (content)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(sorted(REGISTRY))}")
    factory, _ = REGISTRY[name]
    params = {**model_params(name, models_dir), **(overrides or {})}
    try:
        est = factory(scale, **params)
    except TypeError as exc:
        raise ValueError(f"model {name!r}: bad parameter in {models_dir / (name + '.toml')} or overrides: {exc}") from None
    if getattr(est, "uses_side", False) and side is not None:
        est.with_side(side)
    return est


def uses_side(name: str) -> bool:
    """Whether ``name``'s estimator reads item side data (callers then pass ``side``)."""
    return bool(getattr(build(name, Scale()), "uses_side", False))
