"""train_torch: a deep model trained on the exported features, its test predictions scored in Spark."""

from __future__ import annotations

import json
import logging
import tempfile
from typing import Any

from pyspark.sql import SparkSession

from recsys_spark import registry, tracking
from recsys_spark import split as spl
from recsys_spark.config import Config
from recsys_spark.io import fs
from recsys_spark.schemas import COL_ITEM, COL_USER
from recsys_spark.stages import layout
from recsys_spark.stages.manifest import run_stage
from recsys_spark.stages.stage import Stage

log = logging.getLogger(__name__)


def run_train_torch(spark: SparkSession, cfg: Config, name: str | None = None, force: bool = False) -> dict[str, Any]:
    """Train ``torch.model`` on the exported features; write the model and its test predictions.

    Trains on ``interactions/train`` with early stopping on
    ``interactions/valid`` (locally or through TorchDistributor, per
    ``[torch]``), then scores the test part in Spark (``predict_batch_udf``):
    ``predictions/ratings`` and ``predictions/topn`` in the contract shapes,
    ``model/`` (:class:`~recsys_spark.torch.recommender.DeepModel`), and the
    run's ``best.pt`` / ``result.json``.  Accounting: test rows asked =
    predicted; users with lists.
    """
    name = name or cfg.torch.model
    models_dir = layout.models_dir_of(cfg)
    if not registry.is_deep(name):
        deep = sorted(n for n in registry.REGISTRY if registry.is_deep(n))
        raise ValueError(f"torch.model: {name!r} is not a registered deep model; choose one of {', '.join(deep)}")
    export_out = layout.features(cfg)
    output = layout.torch(cfg, name)
    params = {
        **registry.model_params(name, models_dir), "distributor": cfg.torch.distributor, "num_processes": cfg.torch.num_processes,
        "backend": cfg.torch.backend, "use_gpu": cfg.torch.use_gpu,
    }  # fmt: skip

    if not fs.exists(spark, f"{export_out}/metadata.json"):
        raise FileNotFoundError(f"{export_out}/metadata.json not found: run the export_features stage first (recsys-spark export_features)")

    def body(tmp: str) -> dict[str, Any]:
        meta = json.loads(fs.read_text(spark, f"{export_out}/metadata.json"))
        local = lambda p: p[len("file:"):] if p.startswith("file:") else p  # noqa: E731 - the loader reads local or mounted paths
        mlflow = None
        if cfg.torch.log_mlflow and cfg.tracking.enabled:
            uri, _ = tracking.tracking_uri(cfg)
            mlflow = {"uri": uri, "experiment": cfg.tracking.experiment, "run_name": f"train_torch:{name}"}
        model_est = registry.build(name, layout.rating_scale(spark, cfg), {**params, "mlflow": mlflow}, models_dir)
        train = spark.read.parquet(f"{export_out}/interactions/{spl.TRAIN}")
        with tempfile.TemporaryDirectory(prefix=f"train_torch-{name}-") as work:
            valid = f"{export_out}/interactions/{spl.VALID}"
            has_valid = spark.read.parquet(valid).limit(1).count() > 0
            model = model_est.fit_exported(
                train, local(f"{export_out}/interactions/{spl.TRAIN}"), local(valid) if has_valid else None, work,
                n_users=meta["n_users"], n_items=meta["n_items"],
            )  # fmt: skip
            fs.copy_from_local(spark, model.info.pop("state"), f"{tmp}/best.pt")
        model.save(f"{tmp}/model")
        fs.write_json(spark, f"{tmp}/result.json", model.info)
        test = spark.read.parquet(f"{export_out}/interactions/{spl.TEST}")
        asked = test.count()
        model.predict(test.select(COL_USER, COL_ITEM)).write.parquet(f"{tmp}/predictions/ratings")
        users = test.select(COL_USER).distinct()
        model.recommend(users, cfg.models.k).write.parquet(f"{tmp}/predictions/topn")
        predicted = spark.read.parquet(f"{tmp}/predictions/ratings").count()
        if predicted != asked:
            raise RuntimeError(f"train_torch {name}: {asked} test rows asked, {predicted} predicted")
        counts = {
            "train_rows": train.count(), "test_rows": asked, "predicted": predicted, "users": users.count(),
            "users_with_lists": spark.read.parquet(f"{tmp}/predictions/topn").select(COL_USER).distinct().count(),
            "best_epoch": model.info["best_epoch"], "valid": model.info["valid"], "metric": model.info["metric"],
            "distributor": cfg.torch.distributor,
        }  # fmt: skip
        log.info("train_torch %s: %s", name, counts)
        return counts

    extra = {"model": name, "params": params, "k": cfg.models.k}
    return run_stage(spark, cfg, "train_torch", output, STAGE.sections, [export_out], body, force, extra)


STAGE = Stage(
    name="train_torch", run=run_train_torch,
    help="train a deep model on the exported features (locally or with TorchDistributor) and score the test part in Spark",
    sections=("torch",), inputs=lambda cfg, _m=None: [layout.features(cfg)],
    outputs=lambda cfg, m=None: [layout.torch(cfg, m or cfg.torch.model)],
    instances=lambda cfg: [], model_key="torch.model",
)  # fmt: skip
