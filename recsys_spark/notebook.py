"""Helpers that let a Databricks source-format notebook also run as a plain script.

Convention for ``notebooks/*.py``: ``# Databricks notebook source`` first,
cells separated by ``# COMMAND ----------``, Markdown cells as ``# MAGIC %md``
lines.  Parameters come from :func:`widget`: a Databricks widget when
``dbutils`` exists, else the environment variable ``RECSYS_NB_<NAME>``, else
the default -- so ``python notebooks/week4_baselines.py`` runs locally and a
test can run it on small data.
"""

from __future__ import annotations

import builtins
import logging
import os
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
