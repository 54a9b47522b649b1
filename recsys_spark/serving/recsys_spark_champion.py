"""The served recommender's loader: MLflow's ``loader_module`` for the champion model.

This file is shipped inside the logged MLflow model (``code/``) and imports
only numpy, pandas and pyarrow, so the model loads and serves wherever MLflow
does, without pyspark or the rest of ``recsys_spark``; nothing of ours is
pickled.  The model's data (``data/`` in the MLflow model) is what the final
job wrote:

* ``lists.parquet``: every user's explained top-N (``user_id``, ``rank``,
  ``item_id``, ``title``, ``score``, ``explanation``, ``source``);
* ``cold_start.parquet``: the list a user with no ratings gets (``rank``,
  ``item_id``, ``title``, ``score``, ``explanation``);
* ``meta.json``: ``k`` (the stored list length) and what the lists came from.

Input: one row per request, ``user_id`` (the raw id, a string), optionally
``k`` (at most the stored length) and ``exclude`` (raw item ids to leave out).
Output: one row per input row, with the list as arrays (``item_ids``,
``titles``, ``scores``, ``explanations``), ``known`` (whether the user had a
list in the final job) and ``source`` (``blend``, or ``cold_start`` for an
unknown user or one without ratings).  With ``exclude`` the list is the stored
list without those items: it can be shorter than ``k``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

LIST_COLUMNS = ("item_id", "title", "score", "explanation")
OUTPUT_COLUMNS = ("user_id", "known", "source", "item_ids", "titles", "scores", "explanations")


try:  # MLflow's scoring server answers an MlflowException with its message and a 400; other errors lose the message
    from mlflow.exceptions import MlflowException as _Base
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
except ImportError:  # the lists can be read without MLflow too
    _Base = ValueError  # type: ignore[misc,assignment]
    INVALID_PARAMETER_VALUE = 0


class InvalidRequest(_Base):  # type: ignore[misc,valid-type]
    """A request the model cannot answer (bad ``k``, no ``user_id``): the server answers it with a 400 and the reason."""

    def __init__(self, message: str):
        if _Base is ValueError:
            super().__init__(message)
        else:
            super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def _missing(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, float) and math.isnan(v):
        return True
    return False


class Champion:
    """The lists in memory, indexed by raw user id (one dict lookup per request)."""

    def __init__(self, data_path: str | Path):
        root = Path(data_path)
        self.meta = json.loads((root / "meta.json").read_text())
        self.k = int(self.meta["k"])
        lists = pq.read_table(root / "lists.parquet").to_pandas().sort_values(["user_id", "rank"], kind="stable")
        self._cols = {c: lists[c].to_numpy() for c in (*LIST_COLUMNS, "source")}
        self._rows = {str(u): ix for u, ix in lists.groupby("user_id", sort=False).indices.items()}
        cold = pq.read_table(root / "cold_start.parquet").to_pandas().sort_values("rank")
        self._cold = {c: cold[c].to_numpy() for c in LIST_COLUMNS}

    def __len__(self) -> int:
        return len(self._rows)

    def _one(self, user_id: Any, k: Any, exclude: Any) -> dict[str, Any]:
        if _missing(user_id) or str(user_id) == "":
            raise InvalidRequest("each row needs a user_id (the raw id, as in the ratings file)")
        uid = str(user_id)
        try:
            n = self.k if _missing(k) else int(k)
        except (TypeError, ValueError):
            raise InvalidRequest(f"k must be a whole number, got {k!r} (user_id {uid!r})") from None
        if n < 1:
            raise InvalidRequest(f"k must be at least 1, got {k!r} (user_id {uid!r})")
        rows = self._rows.get(uid)
        if rows is not None:
            cols = {c: self._cols[c][rows] for c in LIST_COLUMNS}
            source = str(self._cols["source"][rows[0]])
        else:
            cols, source = self._cold, "cold_start"
        if not _missing(exclude) and len(exclude):
            keep = ~np.isin(cols["item_id"], np.asarray([str(x) for x in exclude], dtype=object))
            cols = {c: v[keep] for c, v in cols.items()}
        return {
            "user_id": uid, "known": rows is not None, "source": source,
            "item_ids": [str(x) for x in cols["item_id"][:n]], "titles": [str(x) for x in cols["title"][:n]],
            "scores": [float(x) for x in cols["score"][:n]], "explanations": [str(x) for x in cols["explanation"][:n]],
        }  # fmt: skip

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """One output row per input row (see the module docstring)."""
        df = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "user_id" not in df.columns:
            raise InvalidRequest(f"the input needs a user_id column (got {list(df.columns)})")
        ks = df["k"] if "k" in df.columns else [None] * len(df)
        ex = df["exclude"] if "exclude" in df.columns else [None] * len(df)
        out = [self._one(u, k, e) for u, k, e in zip(df["user_id"], ks, ex, strict=True)]
        return pd.DataFrame(out, columns=list(OUTPUT_COLUMNS))


def _load_pyfunc(data_path: str) -> Champion:
    """MLflow's entry point for a ``loader_module`` model."""
    return Champion(data_path)
