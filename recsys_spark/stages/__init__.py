"""Stages: the one layer that knows output paths.

Each stage is a module here with a ``run_<stage>(spark, cfg, ...)`` that reads
its inputs (other stages' outputs, through :mod:`.layout`), calls the
library's DataFrame functions and writes its outputs atomically with a
manifest (:mod:`.manifest`), and a ``STAGE`` declaration (:class:`.Stage`:
inputs, outputs, config sections, the instances a config needs).
:mod:`recsys_spark.pipeline` orders the declared stages from their inputs and
outputs; ``jobs/<stage>.py`` and ``recsys-spark <stage>`` run one.
"""

from __future__ import annotations

from recsys_spark.stages import layout
from recsys_spark.stages.blend import STAGE as _BLEND
from recsys_spark.stages.blend import run_blend
from recsys_spark.stages.content import STAGE as _CONTENT
from recsys_spark.stages.content import run_content
from recsys_spark.stages.evaluate import STAGE as _EVALUATE
from recsys_spark.stages.evaluate import run_evaluate, score_predictions
from recsys_spark.stages.export import STAGE as _EXPORT
from recsys_spark.stages.export import run_export
from recsys_spark.stages.factorize import STAGE as _FACTORIZE
from recsys_spark.stages.factorize import run_factorize
from recsys_spark.stages.final import STAGE as _FINAL
from recsys_spark.stages.final import run_final
from recsys_spark.stages.generate import STAGE as _GENERATE
from recsys_spark.stages.generate import run_generate
from recsys_spark.stages.ingest import STAGE as _INGEST
from recsys_spark.stages.ingest import run_ingest
from recsys_spark.stages.layout import (
    models_dir_of,
    rating_scale,
    read_ingested,
    read_predictions,
    read_split,
    read_train_valid,
    side_data,
    split_name,
)
from recsys_spark.stages.manifest import fingerprint, run_stage
from recsys_spark.stages.neighbors import STAGE as _NEIGHBORS
from recsys_spark.stages.neighbors import run_neighbors
from recsys_spark.stages.predict import STAGE as _PREDICT
from recsys_spark.stages.predict import run_predict
from recsys_spark.stages.publish import STAGE as _PUBLISH
from recsys_spark.stages.publish import run_publish
from recsys_spark.stages.split import STAGE as _SPLIT
from recsys_spark.stages.split import run_split
from recsys_spark.stages.stage import Stage
from recsys_spark.stages.train_torch import STAGE as _TRAIN_TORCH
from recsys_spark.stages.train_torch import run_train_torch

# every stage, in the order that breaks ties when the pipeline sorts them by their inputs
STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        _GENERATE, _INGEST, _SPLIT, _EXPORT, _CONTENT, _FACTORIZE, _NEIGHBORS, _TRAIN_TORCH, _PREDICT, _BLEND, _FINAL, _EVALUATE, _PUBLISH,
    )
}  # fmt: skip

__all__ = [
    "STAGES", "Stage", "fingerprint", "layout", "models_dir_of", "rating_scale", "read_ingested", "read_predictions",
    "read_split", "read_train_valid", "run_blend", "run_content", "run_evaluate", "run_export", "run_factorize",
    "run_final", "run_generate", "run_ingest", "run_neighbors", "run_predict", "run_publish", "run_split", "run_stage", "run_train_torch",
    "score_predictions", "side_data", "split_name",
]  # fmt: skip
