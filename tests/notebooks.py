"""Run a notebook in notebooks/ as a plain script with parameters (env vars)."""

from __future__ import annotations

import os
import runpy
from pathlib import Path

from tests.conftest import ROOT


def run_notebook(name: str, **params: str) -> dict:
    """Execute ``notebooks/<name>.py``; widgets read ``RECSYS_NB_<NAME>`` from the environment."""
    path = ROOT / "notebooks" / f"{name}.py"
    text = path.read_text()
    assert text.startswith("# Databricks notebook source\n"), f"{path} is not in Databricks source format"
    assert "# COMMAND ----------" in text
    keys = [f"RECSYS_NB_{k.upper()}" for k in params]
    saved = {k: os.environ.get(k) for k in keys}
    try:
        for k, v in params.items():
            os.environ[f"RECSYS_NB_{k.upper()}"] = v
        return runpy.run_path(str(Path(path)), run_name="__main__")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def constant_rmse(train, test) -> float:
    """RMSE on ``test`` of the constant that knows ``train``'s mean rating: a model that learned anything beats it."""
    from pyspark.sql import functions as F

    mu = train.agg(F.avg("rating")).first()[0]
    return float(test.agg(F.sqrt(F.avg((F.col("rating") - F.lit(mu)) ** 2))).first()[0])
