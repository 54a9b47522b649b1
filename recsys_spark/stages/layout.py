"""The output tree: every path a stage reads or writes, and the readers of other stages' outputs.

Under ``<paths.output>/<dataset>/``::

    raw/                          generated data (dataset.kind = "generated")
    ingest/{ratings,items,users,tags,user_map,item_map,quarantine}
    splits/<protocol>-<hash>/{train,valid,test,negatives}   or ml100k_folds/u<k>/{train,test}
    predictions/<model>/{valid,test}/{ratings,topn}
    neighbors/<model>/table       factors/<model>/...       content/<model>/...
    features/<split>/...          torch/<model>/...
    blend/level1/{valid,test}     blend/test/{ratings,topn}
    final/{recommendations/bucket=<b>,cold_start}
    evaluate/{results,per_user,segments,results.json,results.md}   publish/model_card.md

Only this module and the stage modules know these paths; models take
DataFrames.
"""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession

from recsys_spark import registry
from recsys_spark import split as spl
from recsys_spark.config import Config
from recsys_spark.content import SideData
from recsys_spark.io import fs
from recsys_spark.recommender import Scale
from recsys_spark.schemas import RATINGS


def split_name(cfg: Config) -> str:
    """Folder of a split: the protocol plus a hash of its parameters, so that
    splits with different ratios/seeds (the pipeline's, the benchmark's) coexist."""
    if cfg.split.protocol == "ml100k_folds":
        return "ml100k_folds"
    return f"{cfg.split.protocol}-{cfg.section_hash('split')[:8]}"


def raw(cfg: Config) -> str:
    return cfg.dataset_path


def ingested(cfg: Config, table: str | None = None) -> str:
    return cfg.stage_path("ingest", *([table] if table else []))


def split(cfg: Config) -> str:
    return cfg.stage_path("splits", split_name(cfg))


def predictions(cfg: Config, model: str) -> str:
    return cfg.stage_path("predictions", model)


def neighbors(cfg: Config, model: str) -> str:
    return cfg.stage_path("neighbors", model)


def factors(cfg: Config, model: str) -> str:
    return cfg.stage_path("factors", model)


def content(cfg: Config, model: str) -> str:
    return cfg.stage_path("content", model)


def features(cfg: Config) -> str:
    return cfg.stage_path("features", split_name(cfg))


def torch(cfg: Config, model: str) -> str:
    return cfg.stage_path("torch", model)


def blend(cfg: Config) -> str:
    return cfg.stage_path("blend")


def final(cfg: Config) -> str:
    return cfg.stage_path("final")


def evaluate(cfg: Config) -> str:
    return cfg.stage_path("evaluate")


def publish(cfg: Config) -> str:
    return cfg.stage_path("publish")


# -- readers of other stages' outputs ------------------------------------------------
def read_ingested(spark: SparkSession, cfg: Config, table: str = RATINGS) -> DataFrame:
    path = ingested(cfg, table)
    if not fs.exists(spark, path):
        raise FileNotFoundError(f"{path} not found: run the ingest stage first (recsys-spark ingest)")
    return spark.read.parquet(path)


def side_data(spark: SparkSession, cfg: Config) -> SideData:
    """The side tables content models read: ``items`` and, where the dataset has them, ``tags`` and ``users``."""
    tags_path, users_path = ingested(cfg, "tags"), ingested(cfg, "users")
    return SideData(
        read_ingested(spark, cfg, "items"),
        spark.read.parquet(tags_path) if fs.exists(spark, tags_path) else None,
        spark.read.parquet(users_path) if fs.exists(spark, users_path) else None,
    )


def read_split(spark: SparkSession, cfg: Config, part: str, fold: int | None = None) -> DataFrame:
    base = split(cfg)
    path = f"{base}/u{fold}/{part}" if fold is not None else f"{base}/{part}"
    if not fs.exists(spark, path):
        raise FileNotFoundError(f"{path} not found: run the split stage first (recsys-spark split)")
    return spark.read.parquet(path)


def read_train_valid(spark: SparkSession, cfg: Config) -> DataFrame:
    """Train + valid: what the export stages (neighbours, factors, content) fit on."""
    return read_split(spark, cfg, spl.TRAIN).unionByName(read_split(spark, cfg, spl.VALID))


def read_predictions(spark: SparkSession, cfg: Config, name: str, part: str, kind: str) -> DataFrame:
    return spark.read.parquet(f"{predictions(cfg, name)}/{part}/{kind}")


def rating_scale(spark: SparkSession, cfg: Config) -> Scale:
    """The dataset's declared rating scale, as ingest recorded it."""
    manifest = fs.read_manifest(spark, ingested(cfg))
    if manifest is None:
        raise FileNotFoundError(f"{ingested(cfg)} not found: run the ingest stage first")
    lo, hi = manifest["counts"]["rating_scale"]
    return Scale(lo, hi)


def models_dir_of(cfg: Config) -> str | None:
    """`models.models_dir`: a folder whose ``<name>.toml`` files take the place of the packaged defaults."""
    return cfg.models.models_dir or None


def check_model(name: str, key: str) -> None:
    """A clear error when the config key ``key`` names a model nobody registered."""
    if name not in registry.REGISTRY:
        raise ValueError(f"{key}: unknown model {name!r}; registered: {', '.join(sorted(registry.REGISTRY))}")
