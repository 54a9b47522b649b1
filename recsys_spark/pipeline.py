"""The end-to-end pipeline: the stages a config needs, ordered by what they read, each skipped when up to date.

Every stage declares its inputs and outputs (:class:`recsys_spark.stages.Stage`);
a stage runs after every stage whose output it reads, ties broken by the
order of :data:`recsys_spark.stages.STAGES`, and only the instances the
config asks for run (one ``predict:<model>`` per entry of ``models.names``,
the export stages of the models it names).  A stage reruns when its config
sections or its inputs' fingerprints changed (see
:mod:`recsys_spark.stages.manifest`); a rerun stage gives its output a new id,
so the stages downstream of it rerun too, and nothing else does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pyspark.sql import SparkSession

from recsys_spark import stages
from recsys_spark.config import Config
from recsys_spark.stages import Stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    """One stage instance of a pipeline run."""

    stage: Stage
    model: str | None

    @property
    def label(self) -> str:
        return self.stage.label(self.model)

    def run(self, spark: SparkSession, cfg: Config, force: bool = False) -> dict[str, Any]:
        if self.stage.model_key is not None:
            return self.stage.run(spark, cfg, self.model, force=force)
        return self.stage.run(spark, cfg, force=force)


def _reads(reader: list[str], writer: list[str]) -> bool:
    """Whether a stage reading ``reader`` reads something under one of ``writer``'s outputs."""
    return any(p == o or p.startswith(o.rstrip("/") + "/") for p in reader for o in writer)


def plan(cfg: Config) -> list[Step]:
    """The steps ``cfg`` needs, each after the steps whose outputs it reads (declaration order otherwise)."""
    steps = [Step(s, m) for s in stages.STAGES.values() for m in s.instances(cfg)]
    io = {st: (st.stage.inputs(cfg, st.model), st.stage.outputs(cfg, st.model)) for st in steps}
    after = {st: {o for o in steps if o is not st and _reads(io[st][0], io[o][1])} for st in steps}
    ordered: list[Step] = []
    while len(ordered) < len(steps):
        ready = [st for st in steps if st not in ordered and after[st] <= set(ordered)]
        if not ready:
            left = [st.label for st in steps if st not in ordered]
            raise ValueError(f"the stages {left} read each other's outputs: no order runs them")
        ordered.append(ready[0])
    return ordered


def pipeline_stages(cfg: Config) -> list[str]:
    """The labels of :func:`plan`'s steps (``predict:<model>`` for each model)."""
    return [st.label for st in plan(cfg)]


def run_pipeline(spark: SparkSession, cfg: Config, force: bool = False) -> dict[str, Any]:
    """Run the planned steps; return each one's manifest (with ``skipped``), keyed by label."""
    results: dict[str, Any] = {}
    steps = plan(cfg)
    for i, step in enumerate(steps, 1):
        log.info("pipeline [%d/%d] %s", i, len(steps), step.label)
        results[step.label] = step.run(spark, cfg, force=force)
    ran = [n for n, m in results.items() if not m["skipped"]]
    log.info("pipeline finished: ran %s, skipped %s", ran or "nothing", [n for n in results if n not in ran] or "nothing")
    return results
