"""Write benchmarks/results/README.md: every result file, what protocol and dataset it holds, which models.

    .venv/bin/python benchmarks/index_results.py

Files are named ``<protocol>/<dataset>/<models or study>.json``; ``studies/``
holds validation sweeps behind a default, ``performance/`` timings and
memory, ``tuning/`` Optuna studies.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

FOLDERS = {
    "rating": "rating protocol: ML-100K canonical folds u1..u5, RMSE / MAE (`recsys-spark benchmark rating`)",
    "topn": "top-N protocol: per-user stratified 75/25, seed 42, k = 10 (`recsys-spark benchmark topn`)",
    "coldstart": "cold-start protocols: new users (3 ratings), new items (`recsys-spark benchmark coldstart`)",
    "nextitem": "next-item protocol: each user's latest rating, full ranking, k = 10 (`recsys-spark benchmark nextitem`)",
    "lastout": "leave-last-out with 99 sampled negatives (`benchmarks/deep.py lastout`)",
    "suite": "every model on every protocol, one cell per (dataset, protocol, model) (`recsys-spark report --suite`)",
    "studies": "validation sweeps behind a default (train part only; `docs/studies/`)",
    "performance": "wall time, memory, scaling (`docs/performance.md`)",
    "tuning": "Optuna studies (`recsys-spark tune`)",
    "reliability": "repeated runs, faults, a lost executor, Spark Connect (`benchmarks/reliability.py`, `docs/reliability.md`)",
    "scale": "the whole pipeline on bigger or long-tail generated data, per stage (`benchmarks/scale.py`, `docs/performance.md`)",
}


def describe(path: Path) -> str:
    if path.suffix != ".json":
        return "notes"
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return "(not JSON)"
    if isinstance(data, dict) and isinstance(data.get("models"), dict):
        return "models: " + ", ".join(data["models"])
    if isinstance(data, dict) and "best_params" in data:
        return f"best {data.get('metric', '')} {data.get('best_value')}"
    if isinstance(data, dict) and isinstance(data.get("experiments"), dict):
        models = sorted({m for e in data["experiments"].values() if isinstance(e, dict) for m in e.get("models", {})})
        return "experiments: " + ", ".join(data["experiments"]) + "; models: " + ", ".join(models)
    return "keys: " + ", ".join(list(data)[:6]) if isinstance(data, dict) else type(data).__name__


def main() -> None:
    lines = [
        "# Result files",
        "",
        "Written by `benchmarks/index_results.py`; every figure in `docs/` names one of these files.",
        "",
    ]
    for folder, what in FOLDERS.items():
        files = sorted(p for p in (RESULTS / folder).rglob("*") if p.is_file())
        if not files:
            continue
        lines += [f"## {folder}/", "", what, ""]
        cells = [p for p in files if "cells" in p.relative_to(RESULTS).parts]  # the suite's cells: counted, not listed
        lines += [f"- `{p.relative_to(RESULTS)}`: {describe(p)}" for p in files if p not in cells]
        if cells:
            n = len({p.parent for p in cells})
            lines.append(f"- `{folder}/cells/<dataset>/<protocol>/<model>/`: {n} cells (`result.json`, `values.parquet`)")
        lines.append("")
    (RESULTS / "README.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
