"""Models by name: each family adds itself with one entry.

``build("bias", scale)`` returns an estimator configured from its tuned
defaults, ``recsys_spark/conf/models/bias.toml`` (its ``[params]`` table), with
any overrides applied.  The defaults are package data: they are read through
:mod:`importlib.resources`, so an installed wheel, the zip that
``spark-submit.sh`` ships and a source checkout all find the same files.  A
registered model without a defaults file, unknown names and unknown
parameters fail naming the model, the key or the path.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from recsys_spark.baselines import BiasBaseline, GlobalMean, ItemMean, Popularity, UserMean
from recsys_spark.content import ContentBased
from recsys_spark.factorization.als import ALS
from recsys_spark.factorization.impute import SVDImpute
from recsys_spark.factorization.svd import NMFMU, SVD, SVDpp
from recsys_spark.itemitem import EASE, SLIM, RP3beta
from recsys_spark.neighbors import KNN
from recsys_spark.nextitem import LastItem
from recsys_spark.recommender import Recommender, Scale

# the tuned defaults: a folder of the package, or inside the zip spark-submit.sh ships
MODELS_DIR: Traversable = resources.files("recsys_spark") / "conf" / "models"

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
    "ease": (lambda scale, **p: EASE(scale=scale, **p), "topn"),
    "rp3beta": (lambda scale, **p: RP3beta(scale=scale, **p), "topn"),
    "slim": (lambda scale, **p: SLIM(scale=scale, **p), "topn"),
    "last_item": (lambda scale, **p: LastItem(scale=scale, **p), "topn"),
    # the same model under the name the literature uses; it reads last_item's defaults (ALIASES)
    "cooccurrence": (lambda scale, **p: LastItem(scale=scale, **{"name": "cooccurrence", **p}), "topn"),
}

# a registered name that reads another's defaults file (same estimator class, its own output name)
ALIASES: dict[str, str] = {"cooccurrence": "last_item"}




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
    # FM is DeepFM with the deep part off (net.layers = []): one network, side-feature fields
    "fm": (_deep("fm", "deepfm"), "topn"),
    "deepfm": (_deep("deepfm", "deepfm"), "topn"),
    "fm_explicit": (_deep("fm_explicit", "deepfm", explicit=True), "rating+topn"),
    "deepfm_explicit": (_deep("deepfm_explicit", "deepfm", explicit=True), "rating+topn"),
})  # fmt: skip


def _sequence(name: str) -> Callable[..., Recommender]:
    """Sequence models (torch, trained on the driver from the users' histories; not an exported-features model)."""

    def factory(scale: Scale, **p: Any) -> Recommender:
        from recsys_spark.torch.seqrec import SequenceRecommender

        return SequenceRecommender(scale=scale, name=name, kind=name, **p)

    return factory


REGISTRY.update({"sasrec": (_sequence("sasrec"), "topn"), "seq_gru": (_sequence("seq_gru"), "topn")})


# defaults of models registered at run time with ``register(..., defaults={...})``
_DEFAULTS: dict[str, dict[str, Any]] = {}


def register(
    name: str, factory: Callable[..., Recommender], task: str = "rating+topn", defaults: Mapping[str, Any] | None = None,
) -> None:  # fmt: skip
    """Add a model; ``defaults`` are its parameters when it has no ``recsys_spark/conf/models/<name>.toml`` in the package."""
    REGISTRY[name] = (factory, task)
    if defaults is not None:
        _DEFAULTS[name] = dict(defaults)


def defaults_path(name: str, models_dir: str | Path | None = None) -> Traversable:
    """Where ``name``'s defaults are read: ``models_dir/<name>.toml`` when that file exists, else the package's.

    An alias (:data:`ALIASES`) without a file of its own reads its target's.
    """
    for key in (name, ALIASES.get(name)):
        if key and models_dir and (Path(models_dir) / f"{key}.toml").is_file():
            return Path(models_dir) / f"{key}.toml"
    own = MODELS_DIR / f"{name}.toml"
    return MODELS_DIR / f"{ALIASES[name]}.toml" if name in ALIASES and not own.is_file() else own


def model_params(name: str, models_dir: str | Path | None = None) -> dict[str, Any]:
    """The tuned defaults of ``name``: its ``[params]`` table (see :func:`defaults_path`).

    A registered model whose file cannot be found is an error naming the path
    (a silent ``{}`` would run the model with its code defaults instead).
    """
    path = defaults_path(name, models_dir)
    if not path.is_file():
        if name in _DEFAULTS:
            return dict(_DEFAULTS[name])
        where = f"{path}" + (f" (nor {Path(models_dir) / (name + '.toml')})" if models_dir else "")
        raise FileNotFoundError(f"model {name!r}: its defaults file {where} is missing")
    data = tomllib.loads(path.read_text())
    unknown = set(data) - {"params"}
    if unknown:
        raise ValueError(f"{path}: unknown table(s) {sorted(unknown)}; parameters go under [params]")
    return dict(data.get("params", {}))


def build(
    name: str, scale: Scale, overrides: dict[str, Any] | None = None, models_dir: str | Path | None = None,
) -> Recommender:  # fmt: skip
    """The estimator ``name`` with its tuned defaults (side data goes to ``fit``: see :meth:`Recommender.fit_with`)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(sorted(REGISTRY))}")
    factory, _ = REGISTRY[name]
    params = {**model_params(name, models_dir), **(overrides or {})}
    try:
        est = factory(scale, **params)
    except TypeError as exc:
        raise ValueError(f"model {name!r}: bad parameter in {defaults_path(name, models_dir)} or overrides: {exc}") from None
    return est


def uses_side(name: str) -> bool:
    """Whether ``name``'s estimator reads item side data (callers then pass ``side`` to ``fit``)."""
    return build(name, Scale()).uses_side
