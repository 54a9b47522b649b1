"""The whole pipeline on bigger generated data: time, shuffle, spills and memory per stage.

    # a long-tail catalogue: 7K users, 105K items, 282K ratings (most items rated once or twice)
    .venv/bin/python benchmarks/scale.py longtail --out benchmarks/results/scale/longtail.json
    # content neighbours of that run's item vectors: sparse_topk's two layouts (same table?), and the whole catalogue
    .venv/bin/python benchmarks/scale.py topk --out benchmarks/results/scale/content-neighbors.json
    # kNN top-N of that run's training part: the blockwise sparse product against the join reference
    .venv/bin/python benchmarks/scale.py knn --out benchmarks/results/scale/knn-topn.json
    # the ratings axis: 1M, 5M, 20M generated ratings (users and items grow with them)
    .venv/bin/python benchmarks/scale.py ratings --sizes 1000000,5000000,20000000 --out benchmarks/results/scale/ratings.json

Each run is one ``recsys-spark pipeline`` process (``local[2]``, ``conf/local.toml``: every
family of the default pipeline) from an empty output, with Spark's event log on.  Per
pipeline stage: wall time (its manifest), shuffle read and write, memory and disk spills,
task time (the event log's task metrics of the jobs tagged ``recsys.stage``); per run: peak
resident memory of the driver's Python and of its JVM (sampled every 0.5 s).  ``--models``
and ``--set`` change what runs; ``--timeout`` bounds each run (a run past it is stopped and
reported with the stages it finished).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from harness import manifests, tree_rss, write_result  # noqa: E402

STAGE_PROPERTY = "recsys.stage"  # recsys_spark.stages.manifest.STAGE_PROPERTY

# the shape of a real long-tail table (7K users, 105K items, 282K ratings); a flatter popularity
# curve than MovieLens (zipf 0.8, not 1.2) so that most of the catalogue is rated
LONGTAIL = ["generate.n_users=7000", "generate.n_items=105000", "generate.n_ratings=282000", "generate.zipf_exponent=0.8",
            "generate.min_ratings_per_user=5"]  # fmt: skip


class Peaks:
    """Peak RSS of a process (the driver's Python) and of its JVM (``harness.tree_rss``), sampled in a thread."""

    def __init__(self, pid: int, interval_s: float = 0.5) -> None:
        self.proc, self.interval_s = psutil.Process(pid), interval_s
        self.python = self.jvm = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            py, jvm = tree_rss(self.proc)
            self.python, self.jvm = max(self.python, py), max(self.jvm, jvm)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {"peak_driver_python_mb": round(self.python / 2**20, 1), "peak_jvm_rss_mb": round(self.jvm / 2**20, 1)}


def event_log_metrics(log_dir: Path) -> dict[str, dict[str, float]]:
    """Per ``recsys.stage``: shuffle read/write, spills (MB), task seconds, tasks, Spark jobs; from the event log(s)."""
    job_of_stage: dict[int, str] = {}
    per: dict[str, dict[str, float]] = {}
    for path in sorted(p for p in log_dir.rglob("events_*") if p.is_file()):  # Spark 4: eventlog_v2_<app>/events_N_<app>[.zstd]
        for line in _lines(path):
            ev = json.loads(line)
            kind = ev.get("Event")
            if kind == "SparkListenerJobStart":
                tag = (ev.get("Properties") or {}).get(STAGE_PROPERTY, "(untagged)")
                per.setdefault(tag, _zero())["jobs"] += 1
                for sid in ev.get("Stage IDs", []):
                    job_of_stage[sid] = tag
            elif kind == "SparkListenerTaskEnd":
                m = ev.get("Task Metrics") or {}
                s = per.setdefault(job_of_stage.get(ev.get("Stage ID"), "(untagged)"), _zero())
                r, w = m.get("Shuffle Read Metrics") or {}, m.get("Shuffle Write Metrics") or {}
                s["shuffle_read_mb"] += (r.get("Remote Bytes Read", 0) + r.get("Local Bytes Read", 0)) / 2**20
                s["shuffle_write_mb"] += w.get("Shuffle Bytes Written", 0) / 2**20
                s["memory_spilled_mb"] += m.get("Memory Bytes Spilled", 0) / 2**20
                s["disk_spilled_mb"] += m.get("Disk Bytes Spilled", 0) / 2**20
                s["task_s"] += m.get("Executor Run Time", 0) / 1000
                s["tasks"] += 1
    return {k: {n: round(v, 1) for n, v in d.items()} for k, d in per.items()}


def _lines(path: Path):
    """The lines of an event log file, zstd-compressed (Spark 4's default) or plain."""
    import io

    if path.suffix == ".zstd":
        import zstandard

        with path.open("rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as z:
            yield from io.TextIOWrapper(z, encoding="utf-8")
    else:
        with path.open() as f:
            yield from f


def _zero() -> dict[str, float]:
    return dict.fromkeys(("jobs", "tasks", "task_s", "shuffle_read_mb", "shuffle_write_mb", "memory_spilled_mb", "disk_spilled_mb"), 0.0)


def stage_walls(root: Path) -> dict[str, dict]:
    """Each finished output's stage and wall time, from its manifest."""
    keyed = ("predict", "content", "neighbors")  # one stage name, several outputs: keyed by path
    return {(rel if man["stage"].startswith(keyed) else man["stage"]): {"stage": man["stage"], "wall_s": man["wall_s"]}
            for rel, man in manifests(root).items()}  # fmt: skip


def summarize(work: Path) -> dict:
    """Stage walls (manifests) joined with the event log's metrics, of the run under ``work``.

    A resumed run's event log is in ``events-<n>``: a stage's metrics come from the latest
    process that ran it (a stage that failed in one process and ran again in the next: the rerun).
    """
    metrics: dict[str, dict[str, float]] = {}
    for d in sorted(work.glob("events*"), key=lambda p: (len(p.name), p.name)):  # events, events-1, ...
        metrics.update(event_log_metrics(d))
    stages = {key: {**w, **metrics.get(w["stage"], {})} for key, w in stage_walls(work / "out").items()}
    running = sorted(set(metrics) - {w["stage"] for w in stages.values()} - {"(untagged)"})
    return {"stages": stages, "unfinished": {k: metrics[k] for k in running}, "untagged": metrics.get("(untagged)")}


def run_pipeline(work: Path, sets: list[str], timeout_s: float, resume: bool = False) -> dict:
    """One pipeline process from an empty ``work`` (or, ``resume``, on the outputs already there: the
    finished stages are skipped); its stage walls, event-log metrics and memory peaks (this process's)."""
    if resume:
        events = work / f"events-{len(list(work.glob('events*')))}"
    else:
        shutil.rmtree(work, ignore_errors=True)
        events = work / "events"
    events.mkdir(parents=True)
    args = ["--config", "conf/local.toml", *[x for s in [*sets, f'paths.output="{work / "out"}"'] for x in ("--set", s)]]
    py = str(ROOT / ".venv" / "bin" / "python")
    env = {**os.environ, "PYSPARK_PYTHON": py,
           "PYSPARK_SUBMIT_ARGS": f"--conf spark.eventLog.enabled=true --conf spark.eventLog.dir={events} pyspark-shell"}  # fmt: skip
    env.pop("SPARK_REMOTE", None)
    t0 = time.perf_counter()
    with (work / f"pipeline{events.name[len('events') :]}.log").open("w") as log:
        proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "recsys-spark"), "pipeline", *args], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        peaks = Peaks(proc.pid)
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            rc = None
    wall = time.perf_counter() - t0
    mem = peaks.stop()
    return {"exit": rc, "timed_out": rc is None, "wall_s": round(wall, 1), **mem, **summarize(work), "resumed": resume,
            "log": str(work / f"pipeline{events.name[len('events') :]}.log")}  # fmt: skip


def topk(work: Path, sample: int) -> dict:
    """Content neighbours of the long-tail run's item vectors: both ``sparse_topk`` layouts on the first
    ``sample`` items (same table?), the shipped-items one on the whole catalogue; one local[2] session."""
    from pyspark.sql import functions as F

    from recsys_spark.config import load_config
    from recsys_spark.content.scoring import content_neighbors
    from recsys_spark.spark import get_spark

    feats = work / "out" / "generated" / "content" / "content" / "features"
    if not (feats / "vectors").exists():
        raise SystemExit(f"{feats / 'vectors'} is missing: run `scale.py longtail` first")
    groups = json.loads((feats / "params.json").read_text())["groups"]
    dim = max(a + n for a, n in groups.values())
    cfg = load_config(ROOT / "conf" / "local.toml", [f'paths.output="{work / "topk"}"'])
    spark = get_spark(cfg.spark, str(work / "topk" / "checkpoints"), "scale topk")
    vectors = spark.read.parquet(str(feats / "vectors")).persist()
    n_items = vectors.count()

    def run(v, mb: float, keep: bool = True) -> tuple[float, list]:
        t0 = time.perf_counter()
        nb = content_neighbors(v, dim, 50, broadcast_mb=mb)
        rows = nb.orderBy("a", F.desc("sim"), "b").collect() if keep else nb.write.format("noop").mode("overwrite").save()
        return round(time.perf_counter() - t0, 1), rows

    small = vectors.where(F.col("item_idx") < sample).persist()
    n_small = small.count()
    wall_pairs, pairs = run(small, 0.0)
    wall_shipped, shipped = run(small, 1e9)
    wall_full, _ = run(vectors, 1e9, keep=False)
    same = [tuple(r) for r in pairs] == [tuple(r) for r in shipped]
    spark.stop()
    return {"dim": dim, "items": n_items, "sample_items": n_small, "k": 50,
            "sample": {"block_pairs_s": wall_pairs, "items_shipped_s": wall_shipped, "rows": len(pairs), "same_table": same},
            "catalogue": {"items_shipped_s": wall_full}}  # fmt: skip


def knn(work: Path, names: tuple[str, ...] = ("item_knn", "user_knn")) -> dict:
    """kNN top-N on the long-tail run's training part: the blockwise sparse product against the join reference.

    item_knn and user_knn with their packaged defaults fitted once each on ``train``; top-10 for every
    training user with each ``recommend_kernel`` (written to a no-op sink, then collected to compare);
    one local[2] session."""
    from recsys_spark import registry
    from recsys_spark.config import load_config
    from recsys_spark.spark import get_spark
    from recsys_spark.stages import layout

    splits = sorted((work / "out" / "generated" / "splits").glob("stratified-*"))
    if not splits:
        raise SystemExit("no split under the long-tail run: run `scale.py longtail` first")
    cfg = load_config(ROOT / "conf" / "local.toml", [*LONGTAIL, f'paths.output="{work / "out"}"'])
    spark = get_spark(cfg.spark, str(work / "knn" / "checkpoints"), "scale knn")
    scale = layout.rating_scale(spark, cfg)
    train = spark.read.parquet(str(splits[-1] / "train")).persist()
    n_train = train.count()
    users = train.select("user_idx").distinct().persist()
    n_users = users.count()
    out = {"train_ratings": n_train, "users": n_users, "k": 10}
    for name in names:
        est = registry.build(name, scale)
        t0 = time.perf_counter()
        model = est.fit(train)
        n_pairs = model.neighbors.count()
        fit_s = time.perf_counter() - t0
        row = {"fit_s": round(fit_s, 1), "neighbour_pairs": n_pairs}
        tables = {}
        for kernel in ("blocks", "join"):
            model.params = {**model.params, "recommend_kernel": kernel}
            t0 = time.perf_counter()
            model.recommend(users, 10).write.format("noop").mode("overwrite").save()
            row[f"{kernel}_s"] = round(time.perf_counter() - t0, 1)
            tables[kernel] = sorted((r[0], r[1], r[2], round(r[3], 9)) for r in model.recommend(users, 10).select(
                "user_idx", "rank", "item_idx", "score").collect())  # fmt: skip
        row["rows"] = len(tables["blocks"])
        row["same_lists"] = [t[:3] for t in tables["blocks"]] == [t[:3] for t in tables["join"]]
        row["same_scores_9dp"] = tables["blocks"] == tables["join"]
        # where the lists differ: is it only which of equally scored items made the list (ties at 9 decimals)?
        per = {kernel: {} for kernel in tables}
        for kernel, rows in tables.items():
            for u, _rank, i, sc in rows:
                per[kernel].setdefault(u, []).append((i, sc))
        differ = [u for u in per["blocks"].keys() | per["join"].keys() if per["blocks"].get(u) != per["join"].get(u)]
        row["users_differing"] = len(differ)
        row["differing_only_in_ties"] = all(
            [sc for _, sc in per["blocks"].get(u, [])] == [sc for _, sc in per["join"].get(u, [])] for u in differ
        )
        out[name] = row
        print(json.dumps({name: row}), flush=True)  # progress of a script, not library code
    spark.stop()
    return out


def slopes(rows: list[dict]) -> dict[str, float]:
    """Least-squares slope of log(stage wall) against log(ratings), per stage present in every row."""
    keys = set.intersection(*(set(r["stages"]) for r in rows))
    out = {}
    for k in sorted(keys):
        xs = [math.log(r["n_ratings"]) for r in rows]
        ys = [math.log(max(r["stages"][k]["wall_s"], 1e-3)) for r in rows]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        out[k] = round(sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["longtail", "ratings", "topk", "knn"])
    ap.add_argument("--sample", type=int, default=20000, help="topk: items in the layout comparison")
    ap.add_argument("--sizes", default="1000000,5000000,20000000", help="ratings: generated ratings per run")
    ap.add_argument("--models", default=None, help="comma-separated models.names (default: conf/local.toml's)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per pipeline run")
    ap.add_argument("--work", default=str(ROOT / "build" / "scale"))
    ap.add_argument("--reuse", action="store_true", help="longtail: summarize the run already under --work (no memory peaks)")
    ap.add_argument("--resume", action="store_true", help="longtail: go on with the run under --work (finished stages skipped)")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    sets = ["publish.enabled=false", "tracking.enabled=false", *args.set]
    if args.models:
        sets.append("models.names=[" + ", ".join(f'"{m}"' for m in args.models.split(",")) + "]")
    if args.command == "topk":
        result = {"command": "topk", **topk(Path(args.work) / "longtail", args.sample)}
    elif args.command == "knn":
        names = tuple(args.models.split(",")) if args.models else ("item_knn", "user_knn")
        result = {"command": "knn", **knn(Path(args.work) / "longtail", names)}
    elif args.command == "longtail":
        work = Path(args.work) / "longtail"
        run = {"reused": True, **summarize(work)} if args.reuse else run_pipeline(work, [*LONGTAIL, *sets], args.timeout, args.resume)
        result = {"command": "longtail", "config": [*LONGTAIL, *sets], **run}
    else:
        rows = []
        for n in (int(float(x)) for x in args.sizes.split(",")):
            users, items = max(512, n // 100), max(1500, n // 400)  # ML-25M's ratios: ~160 ratings per user, ~400 per item
            gen = [f"generate.n_ratings={n}", f"generate.n_users={users}", f"generate.n_items={items}"]
            run = run_pipeline(Path(args.work) / f"n{n}", [*gen, *sets], args.timeout)
            row = {"n_ratings": n, "n_users": users, "n_items": items, **run}
            rows.append(row)
            print(json.dumps({"n_ratings": n, "wall_s": row["wall_s"], "exit": row["exit"]}), flush=True)  # progress of a script
        done = [r for r in rows if r["exit"] == 0]
        result = {"command": "ratings", "config": sets, "runs": rows, "slopes": slopes(done) if len(done) > 1 else None}
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
