"""A stage's declaration: what it reads, what it writes, which config it depends on.

The pipeline orders stages from these declarations (a stage runs after the
stages whose outputs it reads) and runs only the instances the config needs
(``instances``: ``[None]`` for a stage that runs once, model names for a stage
that runs per model, ``[]`` when the config needs none).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from recsys_spark.config import Config

Paths = Callable[[Config, "str | None"], list[str]]


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[..., dict[str, Any]]  # run(spark, cfg, [model,] force=False) -> manifest
    help: str
    sections: tuple[str, ...]  # config sections its manifest hashes
    inputs: Paths  # outputs of other stages (or raw files) it reads
    outputs: Paths  # what it writes
    instances: Callable[[Config], list[str | None]]
    model_key: str | None = None  # the config key naming its model, when it takes one (``--model``)
    per_model_label: bool = False  # pipeline label "<name>:<model>" (one instance per model)

    def __call__(self, spark: Any, cfg: Config, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self.run(spark, cfg, *args, **kwargs)

    def label(self, model: str | None) -> str:
        return f"{self.name}:{model}" if self.per_model_label and model else self.name


def once(_cfg: Config) -> list[str | None]:
    return [None]


def nothing(_cfg: Config, _model: str | None = None) -> list[str]:
    return []
