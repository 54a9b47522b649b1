"""Helpers that let a Databricks source-format notebook also run as a plain script.

Convention for ``notebooks/*.py``: ``# Databricks notebook source`` first,
cells separated by ``# COMMAND ----------``, Markdown cells as ``# MAGIC %md``
lines.  Parameters come from :func:`widget`: a Databricks widget when
``dbutils`` exists, else the environment variable ``RECSYS_NB_<NAME>``, else
the default -- so ``python notebooks/week4_baselines.py`` runs locally and a
test can run it on small data.  :func:`setup` is the first cell every
notebook shares: widgets, config, session, and the ingested, split data.
"""

from __future__ import annotations

import builtins
import logging
import os
from functools import cached_property
from typing import Any

log = logging.getLogger(__name__)


def _dbutils() -> Any | None:
    import __main__

    return getattr(__main__, "dbutils", None) or getattr(builtins, "dbutils", None)


def widget(name: str, default: str, label: str | None = None) -> str:
    """A text parameter: Databricks widget, else ``$RECSYS_NB_<NAME>``, else ``default``."""
    db = _dbutils()
    if db is not None:
        db.widgets.text(name, default, label or name)
        return db.widgets.get(name)
    return os.environ.get(f"RECSYS_NB_{name.upper()}", default)


def show(df_or_obj: Any, n: int = 20) -> None:
    """``display`` on Databricks, a logged table elsewhere."""
    import __main__

    display = getattr(__main__, "display", None)
    if display is not None and _dbutils() is not None:
        display(df_or_obj)
        return
    if hasattr(df_or_obj, "limit") and hasattr(df_or_obj, "toPandas"):
        text = df_or_obj.limit(n).toPandas().to_string(index=False)  # bounded: n rows
    else:
        text = str(df_or_obj)
    log.info("\n%s", text)


class Setup:
    """What every notebook starts from: its config, session and the data of the pipeline's first stages.

    ``setup()`` reads the ``dataset``, ``output`` and ``overrides`` widgets, builds
    the config, gets the session and runs generate (generated data only),
    ingest and split (each skipped when up to date).  The tables are read on
    first use: ``train`` is train + valid (what a model is fitted on for the
    test part), ``test`` the test part, both cached.
    """

    def __init__(self, cfg: Any, spark: Any, output: str, ingest: dict[str, Any], split: dict[str, Any]) -> None:
        self.cfg, self.spark, self.output, self.ingest, self.split = cfg, spark, output, ingest, split

    def save_figure(self, fig: Any, name: str, dpi: int = 120) -> str:
        """Write a matplotlib figure as ``<output>/<name>`` and return where it went.

        A plain local output gets the file directly; any other (``dbfs:/``,
        ``s3a://``, ``abfss://``, ``file:/``) goes through the Hadoop file system
        the Spark jobs write with, so the plots land beside the tables.  With a
        tracking location configured the figure is also logged to the active
        MLflow run, if there is one.
        """
        import tempfile
        from pathlib import Path

        from recsys_spark.io import fs

        dest = f"{self.output.rstrip('/')}/{name}"
        if ":" not in self.output.split("/", 1)[0]:  # no scheme: a folder on this machine
            Path(dest).parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(dest, dpi=dpi)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                local = str(Path(tmp, Path(name).name))
                fig.savefig(local, dpi=dpi)
                fs.copy_from_local(self.spark, local, dest)
        try:
            import mlflow

            if mlflow.active_run() is not None:
                mlflow.log_figure(fig, name)
        except ImportError:  # mlflow is a dependency; a trimmed environment may lack it
            pass
        log.info("wrote %s", dest)
        return dest

    @cached_property
    def scale(self) -> Any:
        from recsys_spark import stages

        return stages.rating_scale(self.spark, self.cfg)

    @cached_property
    def side(self) -> Any:
        from recsys_spark import stages

        return stages.side_data(self.spark, self.cfg)

    @cached_property
    def ratings(self) -> Any:
        from recsys_spark import stages

        return stages.read_ingested(self.spark, self.cfg, "ratings").cache()

    @cached_property
    def items(self) -> Any:
        return self.side.items.cache()

    @cached_property
    def train(self) -> Any:
        from recsys_spark import stages

        return stages.read_train_valid(self.spark, self.cfg).cache()

    @cached_property
    def test(self) -> Any:
        from recsys_spark import stages

        return stages.read_split(self.spark, self.cfg, "test").cache()


def setup(title: str, default_dataset: str = "ml-latest-small") -> Setup:
    """Widgets ``dataset`` / ``config`` / ``output`` / ``overrides``, the config, the session, generate + ingest + split.

    ``dataset = generic`` reads a table of your own: its ``[dataset.generic]``
    settings come from the TOML named by the ``config`` widget (or from
    ``overrides``), as for ``recsys-spark pipeline --config``.
    """
    from recsys_spark import stages
    from recsys_spark.benchmark import dataset_overrides
    from recsys_spark.config import load_config
    from recsys_spark.spark import get_spark

    dataset = widget("dataset", default_dataset, "dataset (ml-latest-small, ml-100k, generated, generic, ...)")
    config = widget("config", "", "config TOML (needed for generic)")
    output = widget("output", "output", "output directory (a path or dbfs:/, s3a://, abfss:// ...)")
    extra = [s for s in widget("overrides", "").split(";") if s]  # e.g. generate.n_ratings=5000
    cfg = load_config(config or None, [f'paths.output="{output}"', *dataset_overrides(dataset), *extra])
    spark = get_spark(cfg.spark, cfg.checkpoint_dir, title)
    if cfg.dataset.kind == "generated":
        stages.run_generate(spark, cfg)
    ingest = stages.run_ingest(spark, cfg)
    split = stages.run_split(spark, cfg)
    return Setup(cfg, spark, output, ingest, split)
