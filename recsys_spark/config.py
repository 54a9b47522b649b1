"""Typed, validated configuration loaded from TOML.

Every job takes ``--config FILE`` and any number of ``--set key.path=value``
overrides.  Unknown keys and values of the wrong type fail at start-up with a
:class:`ConfigError` that names the key and where it came from (the file or the
``--set`` argument); nothing is silently ignored.

Override values are parsed as TOML literals (``--set split.seed=7`` gives an
int, ``--set spark.master='"local[4]"'`` or plain ``--set spark.master=local[4]``
gives a string: a value that is not a valid TOML literal is taken as a string).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union


class ConfigError(ValueError):
    """A configuration problem, with the key and source in the message."""


# -- sections ---------------------------------------------------------------
@dataclass
class SparkConfig:
    master: str = "local[2]"  # ignored when spark-submit already set one
    app_name: str = "recsys-spark"
    shuffle_partitions: int = 4
    driver_memory: str = "4g"  # only applies when we launch the JVM ourselves
    checkpoint_dir: str = ""  # "" -> <paths.output>/checkpoints
    # how iterative fits cut their lineage: "local" (fast; a lost executor fails the job) or
    # "reliable" (into checkpoint_dir; survives a lost executor): recsys_spark/lineage.py
    checkpoint: Literal["local", "reliable"] = "local"
    log_level: Literal["ERROR", "WARN", "INFO", "DEBUG"] = "WARN"
    conf: dict[str, str] = field(default_factory=dict)  # any other spark.* setting
    # "sc://HOST:PORT": run against a Spark Connect server instead (also $SPARK_REMOTE); what needs
    # the SparkContext (our SGD engine, EASE/SLIM, the deep models) stops with one error: docs/connect.md
    remote: str = ""


@dataclass
class PathsConfig:
    output: str = "output"
    # where downloaded/shared datasets live; "" -> $RECSYS_DATA_DIR, else ./data
    data_dir: str = ""


@dataclass
class GenericConfig:
    """A ratings table of any shape: column mapping and format."""

    ratings: str = ""  # a relative path (here and for items/users) is under dataset.path when that is set
    format: Literal["csv", "tsv", "whitespace", "parquet"] = "csv"
    header: bool = True
    delimiter: str = ""  # csv only: one character other than ',' (e.g. ";"); "" -> the format's own
    decimal: Literal[".", ","] = "."  # "," reads ratings written as "4,5"
    # how ids are read, per id column: "integer" (ids beyond int64, fractional or negative
    # values are quarantined) or "string" (any non-empty text, trimmed)
    id_types: dict[str, Literal["integer", "string"]] = field(default_factory=lambda: {"user": "integer", "item": "integer"})
    # logical column -> header name (header = true) or 0-based position
    columns: dict[str, str | int] = field(
        default_factory=lambda: {"user": "userId", "item": "movieId", "rating": "rating", "timestamp": "timestamp"}
    )
    items: str = ""  # optional side table: item id, title, genres ('|'-separated)
    items_columns: dict[str, str | int] = field(
        default_factory=lambda: {"item": "movieId", "title": "title", "genres": "genres"}
    )
    users: str = ""  # optional side table: user id, gender, age, occupation, zip
    users_columns: dict[str, str | int] = field(
        default_factory=lambda: {"user": "userId", "gender": "gender", "age": "age", "occupation": "occupation", "zip": "zip"}
    )


DATASET_KINDS = ("generated", "ml-100k", "ml-1m", "ml-latest", "generic")


@dataclass
class DatasetConfig:
    # generated: the embedded synthetic data (made by the generate stage)
    # ml-100k / ml-1m / ml-latest (latest-small, 25m, 32m): MovieLens layouts
    # generic: any ratings table, see [dataset.generic]
    kind: Literal["generated", "ml-100k", "ml-1m", "ml-latest", "generic"] = "generated"
    name: str = ""  # folder name under data_dir and output; "" -> kind
    path: str = ""  # explicit location; "" -> <data_dir>/<name>
    rating_min: float = 0.0  # 0 and 0 -> the kind's declared scale
    rating_max: float = 0.0
    encoding: str = "UTF-8"  # ml-100k's u.item is ISO-8859-1 in the original release
    generic: GenericConfig = field(default_factory=GenericConfig)


@dataclass
class GenerateConfig:
    n_users: int = 512
    n_items: int = 1_500
    n_ratings: int = 64_000
    rank: int = 8
    seed: int = 42
    zipf_exponent: float = 1.2  # item popularity ~ rank^-s
    activity_sigma: float = 1.3  # log-normal spread of user activity
    min_ratings_per_user: int = 20
    noise: float = 0.6
    mu: float = 3.0  # planted global mean (before selection; taste raises the logged mean)
    tag_fraction: float = 0.02  # fraction of ratings that also get a tag
    half_stars: bool = True  # 0.5-5 scale like ml-latest; false -> 1-5 integers
    partitions: int = 0  # 0 -> derived from n_ratings (never from the cluster)
    # defaults calibrated to ML-100K and ml-latest-small: docs/studies/generated-data.md;
    # recsys_spark.generate.POPULARITY_SETTINGS gives the generator before selection by taste
    # which items a user rates: "taste" weighs popularity by exp(taste * p_u . q_i)
    # (missing not at random); "popularity" draws by popularity alone (the data before taste)
    selection: Literal["taste", "popularity"] = "taste"
    taste: float = 3.0  # beta of the affinity weight; 0 -> popularity alone (from a larger pool)
    candidates: float = 3.0  # taste: popularity draws per chosen item (the pool the affinity picks from)
    # taste: share of each user's items whose time places them in a block of their primary genre
    # (the next item depends on the previous ones); 0 -> the time order before this component
    sequence: float = 0.8


@dataclass
class IngestConfig:
    max_quarantine_fraction: float = 0.01
    # 'latest' keeps the rating with the largest timestamp (then the later line)
    duplicates: Literal["latest"] = "latest"


SPLIT_PROTOCOLS = ("random", "stratified", "chronological", "leave_last_out", "ml100k_folds")


@dataclass
class SplitConfig:
    protocol: Literal["random", "stratified", "chronological", "leave_last_out", "ml100k_folds"] = "stratified"
    ratio: float = 0.75  # train share (random / stratified / chronological)
    valid_ratio: float = 0.0  # share of the train part carved out as validation
    seed: int = 42
    n_negatives: int = 0  # sampled negatives per held-out item (HR@k protocol)
    folds: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 5])  # ml100k_folds


@dataclass
class ModelsConfig:
    # registered model names the pipeline fits (parameters: recsys_spark/conf/models/<name>.toml)
    names: list[str] = field(default_factory=lambda: ["global_mean", "user_mean", "item_mean", "popularity", "bias"])
    k: int = 10  # length of the top-N lists each model writes
    models_dir: str = ""  # a folder whose <name>.toml replace the packaged defaults of those models
    # the test part's predictions: from a refit on train + valid (true), or from the fit on train
    # that also predicted valid (false: one fit per model, and the blender's weights apply to the very
    # models they were learned on)
    refit_for_test: bool = True
    save: bool = True  # write each model's test-part fit beside its predictions (RecommenderModel.load reads it back)


@dataclass
class NeighborsConfig:
    # the neighbour-table job: a registered kNN model whose recsys_spark/conf/models/<model>.toml defines the table
    model: str = "item_knn"
    max_neighbors: int = 100  # neighbours kept per entity in the exported table (0: all)


@dataclass
class FactorizeConfig:
    # the factor-export job: a registered factorization model whose factors (and
    # factor interpretation: top titles / genres / tags per factor) are written
    model: str = "nmf"
    top_terms: int = 8  # terms per factor and kind in the interpretation table


@dataclass
class ContentConfig:
    # the content-feature job: item features (+ fitted transform), content
    # neighbours, user profiles, term signal and explained top-N lists
    model: str = "content"  # a registered content model (content / content_hybrid)
    explain_users: int = 200  # users whose top-N lists are explained (0: all)
    top_terms: int = 20  # rows of the term-signal table
    min_items: int = 10  # a term must be on this many items to be in it


@dataclass
class ExportConfig:
    # the feature-export job: Parquet tables a PyTorch job trains on
    negatives: int = 4  # sampled negatives per training positive (seeded, never a positive)
    seed: int = 42
    top_terms: int = 8  # top TF-IDF term ids per item (from the content stage's vectors when present)
    content_model: str = "content"  # whose item vectors give the terms
    row_group_mb: int = 16  # Parquet row-group size: the loader's unit of work (and of sharding)
    files: int = 4  # files per table: row groups to spread over ranks and workers


@dataclass
class TorchConfig:
    # the training launcher (jobs/train_torch.py): a registered deep model on the exported features
    model: str = "neumf"  # gmf | mlp | neumf | neumf_explicit | autorec | cdae
    distributor: str = "local"  # local (this process) | spark (TorchDistributor, Spark tasks) | torchrun (its local mode)
    num_processes: int = 2
    use_gpu: bool = False
    backend: str = "arrow"  # loader: arrow | petastorm
    log_mlflow: bool = True


@dataclass
class EvaluateConfig:
    k: int = 10
    # the metric the report compares the blend and the best single model by;
    # ranking metrics are maximized, rmse/mae minimized
    select_metric: str = "ndcg@10"
    relevance_threshold: float = 0.0  # 0 -> every test item is relevant
    # the significance tests collect per-user / per-rating values of every model on the
    # driver; above this many a seeded hash sample of users is tested (said in the report)
    max_test_rows_for_tests: int = 2_000_000
    # selection (recsys_spark/selection.py): by select_metric within these constraints; a cheaper
    # model not significantly worse than the most accurate one (Holm, alpha) is preferred
    max_cost_s: float = 0.0  # seconds of a model's predict stage (the blend: with its members); 0 -> no budget
    max_recommend_s_per_1k_users: float = 0.0  # seconds to recommend for 1,000 users (predict stage); 0 -> no budget
    min_coverage: float = 0.0  # catalogue coverage of the top-N lists
    alpha: float = 0.05


@dataclass
class BlendConfig:
    # the members: [] -> every model in models.names (rating blends use those that predict ratings)
    members: list[str] = field(default_factory=list)
    rating_methods: list[str] = field(default_factory=lambda: ["mean", "median", "nnls", "ridge", "fwls", "segment", "switch"])
    topn_methods: list[str] = field(default_factory=lambda: ["rrf", "borda"])
    folds: int = 5  # cross-validation over validation users that chooses the rating blend
    max_rows: int = 1_000_000  # validation rows the rating blends are fitted on (whole users, by hash)
    max_users: int = 20_000  # validation users the top-N fusion is chosen on (by hash)
    max_members: int = 4  # members a top-N fusion may combine (greedy forward selection)


@dataclass
class FinalConfig:
    # the final job: the blend's top-N members refit on every rating, explained top-N for every user
    enabled: bool = True  # false: the pipeline stops at the blend (and evaluate)
    members: list[str] = field(default_factory=list)  # [] -> the top-N blend the blend stage chose
    method: str = ""  # with members: single | rrf | borda ("" -> rrf, or single for one member)
    explainer: str = "item_knn"  # a registered item-based kNN model: its similarity table gives "because you rated ..."
    max_neighbors: int = 100  # neighbours per item in that table
    recent_days: int = 30  # "popular lately": the most rated items of this many last days of the data
    popular_top: int = 50  # ... the first this many of them
    buckets: int = 8  # the table is partitioned by user_idx % buckets (recommend --user reads one)


@dataclass
class PublishConfig:
    # the champion: the final job's lists as an MLflow pyfunc model in the registry (recsys_spark/serving);
    # runs after final and evaluate, when both and tracking are enabled
    enabled: bool = True
    model_name: str = ""  # registered model name; "" -> recsys-spark-<dataset name>
    alias: str = "champion"  # the alias the new version gets (roll back by moving it: docs/deploy.md)


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: str = ""  # "" -> $MLFLOW_TRACKING_URI, else sqlite:///<paths.output>/mlflow.db
    experiment: str = "recsys-spark"


@dataclass
class Config:
    spark: SparkConfig = field(default_factory=SparkConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    neighbors: NeighborsConfig = field(default_factory=NeighborsConfig)
    factorize: FactorizeConfig = field(default_factory=FactorizeConfig)
    content: ContentConfig = field(default_factory=ContentConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    torch: TorchConfig = field(default_factory=TorchConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    blend: BlendConfig = field(default_factory=BlendConfig)
    final: FinalConfig = field(default_factory=FinalConfig)
    publish: PublishConfig = field(default_factory=PublishConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    # -- derived values ------------------------------------------------------
    @property
    def dataset_name(self) -> str:
        return self.dataset.name or self.dataset.kind

    @property
    def data_dir(self) -> str:
        return self.paths.data_dir or os.environ.get("RECSYS_DATA_DIR", "") or "data"

    @property
    def dataset_path(self) -> str:
        """Where the raw files of the configured dataset are."""
        if self.dataset.path:
            return self.dataset.path
        if self.dataset.kind == "generated":
            return f"{self.paths.output}/{self.dataset_name}/raw"
        return f"{self.data_dir}/{self.dataset_name}"

    def stage_path(self, stage: str, *parts: str) -> str:
        """Output location of a stage for the configured dataset."""
        return "/".join([self.paths.output, self.dataset_name, stage, *parts])

    @property
    def checkpoint_dir(self) -> str:
        return self.spark.checkpoint_dir or f"{self.paths.output}/checkpoints"

    def section_hash(self, *sections: str, extra: dict[str, Any] | None = None) -> str:
        """Stable hash of the named sections (what a stage's output depends on) and ``extra``."""
        payload: dict[str, Any] = {s: dataclasses.asdict(getattr(self, s)) for s in sections}
        if extra:
            payload["extra"] = extra
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- loading and validation -----------------------------------------------
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    bad = ConfigError(
        f"{source}: key '{key}' must be {_type_name(tp)}, got {type(value).__name__} {value!r}"
    )
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: key '{key}' must be a table, got {value!r}")
        return _build(tp, value, key, source)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad
        return value
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key, source)
            except ConfigError:
                continue
        raise bad
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        _, vt = typing.get_args(tp)
        return {str(k): _coerce(v, vt, f"{key}.{k}", source) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise bad
        (it,) = typing.get_args(tp)
        return [_coerce(v, it, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported config type {tp!r} for {key}")  # programming error


def _build(cls: type, data: dict[str, Any], prefix: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            full = f"{prefix}.{key}" if prefix else key
            raise ConfigError(
                f"{source}: unknown key '{full}' (known keys of "
                f"[{prefix or 'top level'}]: {', '.join(sorted(names))})"
            )
    kwargs = {}
    for name in names:
        if name in data:
            full = f"{prefix}.{name}" if prefix else name
            kwargs[name] = _coerce(data[name], hints[name], full, source)
    obj = cls(**kwargs)
    _check_ranges(obj, prefix, source)
    return obj


def _check_ranges(obj: Any, prefix: str, source: str) -> None:
    """Value checks beyond types, named by key."""

    def fail(key: str, why: str) -> None:
        raise ConfigError(f"{source}: key '{prefix}.{key}' {why}")

    if isinstance(obj, SplitConfig):
        if not 0.0 < obj.ratio < 1.0:
            fail("ratio", f"must be in (0, 1), got {obj.ratio}")
        if not 0.0 <= obj.valid_ratio < 1.0:
            fail("valid_ratio", f"must be in [0, 1), got {obj.valid_ratio}")
        if obj.n_negatives < 0:
            fail("n_negatives", "must be >= 0")
    elif isinstance(obj, IngestConfig):
        if not 0.0 <= obj.max_quarantine_fraction <= 1.0:
            fail("max_quarantine_fraction", "must be in [0, 1]")
    elif isinstance(obj, GenerateConfig):
        for k in ("n_users", "n_items", "n_ratings", "rank"):
            if getattr(obj, k) <= 0:
                fail(k, "must be > 0")
        if obj.min_ratings_per_user * obj.n_users > obj.n_ratings:
            fail(
                "min_ratings_per_user",
                f"times n_users ({obj.min_ratings_per_user * obj.n_users}) exceeds n_ratings ({obj.n_ratings})",
            )
        if obj.n_items < obj.min_ratings_per_user:
            fail("n_items", "must be at least min_ratings_per_user")
        if obj.candidates < 1.0:
            fail("candidates", f"must be >= 1 (popularity draws per chosen item), got {obj.candidates}")
        if obj.taste < 0:
            fail("taste", f"must be >= 0, got {obj.taste}")
        if not 0.0 <= obj.sequence <= 1.0:
            fail("sequence", f"must be in [0, 1] (the share of items placed in genre blocks), got {obj.sequence}")
    elif isinstance(obj, GenericConfig):
        unknown = sorted(set(obj.id_types) - {"user", "item"})
        if unknown:
            fail("id_types", f"has unknown id column(s) {unknown}; use user and item")
        if obj.delimiter and (len(obj.delimiter) != 1 or obj.delimiter in ('"', "\n", "\r")):
            fail("delimiter", f"must be one character (not a quote or a line break), got {obj.delimiter!r}")
        if obj.delimiter and obj.format != "csv":
            fail("delimiter", f"applies to format = 'csv' only (format is {obj.format!r})")
    elif isinstance(obj, DatasetConfig):
        if (obj.rating_min or obj.rating_max) and obj.rating_min >= obj.rating_max:
            fail("rating_min", f"must be below rating_max ({obj.rating_min} >= {obj.rating_max})")
    elif isinstance(obj, BlendConfig):
        from recsys_spark.blend import RATING_METHODS, TOPN_METHODS

        for key, allowed in (("rating_methods", RATING_METHODS), ("topn_methods", TOPN_METHODS)):
            bad = [m for m in getattr(obj, key) if m not in allowed]
            if bad:
                fail(key, f"has unknown method(s) {bad}; use {', '.join(allowed)}")
        for key in ("folds", "max_rows", "max_users", "max_members"):
            if getattr(obj, key) < (2 if key == "folds" else 1):
                fail(key, "is too small")
    elif isinstance(obj, FinalConfig):
        if obj.method not in ("", "single", "rrf", "borda"):
            fail("method", f"must be single, rrf or borda; got {obj.method!r}")
        if obj.method == "single" and len(obj.members) != 1:
            fail("method", f"single takes exactly one member, got {obj.members}")
        if obj.method and not obj.members:
            fail("method", "is set but final.members is empty (the blend's choice is used then)")
        for key in ("recent_days", "popular_top", "buckets"):
            if getattr(obj, key) < 1:
                fail(key, "must be >= 1")
    elif isinstance(obj, (ModelsConfig, EvaluateConfig)):
        if obj.k <= 0:
            fail("k", "must be > 0")
    elif isinstance(obj, SparkConfig):
        if obj.shuffle_partitions <= 0:
            fail("shuffle_partitions", "must be > 0")
    elif isinstance(obj, ExportConfig):
        for k in ("negatives", "row_group_mb", "files"):
            if getattr(obj, k) < 1:
                fail(k, "must be >= 1")
        if obj.top_terms < 0:
            fail("top_terms", "must be >= 0")
    elif isinstance(obj, TorchConfig):
        if obj.distributor not in ("local", "spark", "torchrun"):
            fail("distributor", f"must be one of local, spark, torchrun; got {obj.distributor!r}")
        if obj.backend not in ("arrow", "petastorm"):
            fail("backend", f"must be arrow or petastorm; got {obj.backend!r}")
        if obj.num_processes < 1:
            fail("num_processes", "must be >= 1")


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'split.seed=7'`` -> ``(['split', 'seed'], 7)``."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set split.seed=7")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: malformed key {key!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word such as local[4] is a string
    return key.split("."), value


def _apply_override(data: dict[str, Any], text: str) -> None:
    path, value = parse_override(text)
    node = data
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {text!r}: '{part}' is not a table")
    node[path[-1]] = value


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load ``path`` (TOML) with ``overrides`` applied; defaults where absent."""
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
        source = str(p)
    cfg = _build(Config, data, "", source)
    if overrides:
        merged = copy.deepcopy(data)
        for text in overrides:
            _apply_override(merged, text)
        # validate again so that an override names itself in the error
        try:
            cfg = _build(Config, merged, "", "--set")
        except ConfigError as exc:
            raise ConfigError(f"{exc} (overrides: {' '.join(overrides)})") from None
    return cfg
