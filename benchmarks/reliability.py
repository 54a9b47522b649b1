"""Determinism and fault runs of the whole pipeline: are the outputs the same however a run went?

    # two runs of `make run`'s pipeline from empty outputs, compared stage by stage
    .venv/bin/python benchmarks/reliability.py determinism --out benchmarks/results/reliability/determinism.json
    # tiny data: a clean run, then runs with a failed task in every write and a SIGKILL while a stage writes
    .venv/bin/python benchmarks/reliability.py faults --tries 3 --out benchmarks/results/reliability/faults.json
    # tiny data on a two-worker standalone cluster: one executor JVM killed mid-run, per [spark] checkpoint mode
    .venv/bin/python benchmarks/reliability.py executor-loss --out benchmarks/results/reliability/executor-loss.json
    # make run's pipeline without the models that need a classic session: classic local[2] against a
    # Spark Connect client of a local[2] server (stage times, outputs compared)
    .venv/bin/python benchmarks/reliability.py connect --out benchmarks/results/reliability/connect.json
    # tiny data on a two-worker standalone cluster: spark.locality.wait 3 s (Spark's default) against 0
    .venv/bin/python benchmarks/reliability.py locality --tries 1 --out benchmarks/results/reliability/locality.json

Each run is a ``spark-submit.sh`` process of its own (``local[2]``; the fault
runs ``local[2,4]``, which retries a task up to 4 times).  Outputs are compared
with ``recsys_spark.checksum``: exactly, and to ``--decimals`` places (the
stated tolerance for floating-point sums, whose order Spark does not fix).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from harness import manifests, write_result  # noqa: E402

# `make run`'s pipeline (Makefile: run)
MAKE_RUN = ["--config", "conf/local.toml", "--set", 'models.models_dir="conf/quick"', "--set", "models.refit_for_test=false"]
TINY = [
    "generate.n_users=80", "generate.n_items=120", "generate.n_ratings=3000", "generate.min_ratings_per_user=5", "generate.rank=3",
    'models.names=["popularity", "item_knn", "als", "svd", "ease", "content"]', "publish.enabled=false", "tracking.enabled=false",
]  # fmt: skip


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    py = str(ROOT / ".venv" / "bin" / "python")
    return {**os.environ, "PYTHON": py, "PYSPARK_PYTHON": py, **(extra or {})}


def _cmd(master: str, job: str, args: list[str], conf: tuple[str, ...] = ()) -> list[str]:
    confs = [x for c in ("spark.ui.enabled=false", *conf) for x in ("--conf", c)]
    return [str(ROOT / "spark-submit.sh"), "--master", master, *confs, job, *args]


def _run(master: str, job: str, args: list[str], log: Path, env: dict[str, str] | None = None, conf: tuple[str, ...] = ()) -> float:
    t0 = time.perf_counter()
    with log.open("w") as out:
        rc = subprocess.run(_cmd(master, job, args, conf), cwd=ROOT, env=_env(env), stdout=out, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"{job} failed (exit {rc}); see {log}")
    return time.perf_counter() - t0


def _stage_of(path: str) -> str:
    """The pipeline output a checksum entry belongs to: ``predictions/<model>``, ``neighbors/<model>`` or the stage folder."""
    parts = path.split("/")
    return "/".join(parts[:2]) if parts[0] in ("predictions", "neighbors", "content", "factors", "torch", "features") else parts[0]


def _by_stage(a: dict, b: dict) -> dict[str, dict[str, int]]:
    from recsys_spark.checksum import compare

    out: dict[str, dict[str, int]] = {}
    for path in sorted(set(a) | set(b)):
        s = out.setdefault(_stage_of(path), {"entries": 0, "differ": 0})
        s["entries"] += 1
        s["differ"] += bool(compare({path: a.get(path)} if path in a else {}, {path: b.get(path)} if path in b else {}))
    return out


def _spark(work: Path, name: str):
    from recsys_spark.config import load_config
    from recsys_spark.spark import get_spark

    return get_spark(load_config(None, []).spark, str(work / "checkpoints"), name)


def _checksums(spark, root: str, decimals: int) -> dict[int | None, dict]:
    from recsys_spark.checksum import output_checksums

    return {None: output_checksums(spark, root), decimals: output_checksums(spark, root, decimals)}


def determinism(args: argparse.Namespace) -> dict:
    work = Path(args.work)
    base = [*MAKE_RUN, *[x for s in args.set for x in ("--set", s)]]
    walls: list[float | None] = []
    if args.reuse:  # compare the two runs already under --work (after a change to the comparison)
        walls = [None, None]
    else:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        for name in ("a", "b"):
            walls.append(_run("local[2]", "pipeline", [*base, "--set", f'paths.output="{work / name}"'], work / f"{name}.log"))
    spark = _spark(work, "reliability determinism")
    sums = {name: _checksums(spark, f"{work / name}/generated", args.decimals) for name in ("a", "b")}
    exact, rounded = _by_stage(sums["a"][None], sums["b"][None]), _by_stage(sums["a"][args.decimals], sums["b"][args.decimals])
    stages = {s: {"entries": exact[s]["entries"], "differ_exact": exact[s]["differ"], "differ_rounded": rounded[s]["differ"]}
              for s in exact}  # fmt: skip
    wall = [round(w, 1) if w else w for w in walls]
    return {"command": "determinism", "config": base, "decimals": args.decimals, "wall_s": wall, "stages": stages}


def _tiny_reference(args: argparse.Namespace):
    """A fresh --work folder and a clean local[2] run of the tiny pipeline: (work, args, seconds, spark, checksums)."""
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    sets = [*TINY, *args.set]
    base = ["--config", "conf/local.toml", *[x for s in sets for x in ("--set", s)]]
    clean_s = _run("local[2]", "pipeline", [*base, "--set", f'paths.output="{work / "clean"}"'], work / "clean.log")
    spark = _spark(work, f"reliability {args.command}")
    return work, base, clean_s, spark, _checksums(spark, f"{work / 'clean'}/generated", args.decimals)


def faults(args: argparse.Namespace) -> dict:
    from recsys_spark import faults as fl
    from recsys_spark.checksum import compare

    work, base, clean_s, spark, ref = _tiny_reference(args)
    rng = random.Random(args.seed)
    tries = []
    for i in range(args.tries):
        out, markers = work / f"try{i}", work / f"faults{i}"
        run_args = [*base, "--set", f'paths.output="{out}"']
        env = {fl.ENV: str(markers)}
        killed_log = (work / f"try{i}-killed.log").open("w")
        proc = subprocess.Popen(
            _cmd("local[2,4]", "pipeline", run_args), cwd=ROOT, env=_env(env), stdout=killed_log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        delay = rng.uniform(0.1, 0.9) * clean_s
        time.sleep(delay)
        killed_in = None
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline and killed_in is None:
            try:
                writing = sorted(p.name for p in out.rglob("*.tmp-*") if p.is_dir())
            except OSError:
                writing = []
            if writing:
                os.killpg(proc.pid, signal.SIGKILL)
                killed_in = writing[0]
            time.sleep(0.05)
        proc.wait(timeout=900)
        killed_log.close()
        rerun_s = _run("local[2,4]", "pipeline", run_args, work / f"try{i}-rerun.log", env)
        got = _checksums(spark, f"{out}/generated", args.decimals)
        injected = fl.injected(markers)
        tries.append({
            "killed_after_s": round(delay, 1), "killed_in": killed_in, "injected_failures": len(injected),
            "in_pandas_functions": sum("-map-" in m for m in injected),
            "stages_with_failures": len({m.split("-", 1)[0] for m in injected}), "rerun_s": round(rerun_s, 1),
            "differ_exact": len(compare(ref[None], got[None])), "differ_rounded": len(compare(ref[args.decimals], got[args.decimals])),
            "leftovers": len([p for p in out.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]),
        })  # fmt: skip
        print(json.dumps(tries[-1]), flush=True)  # progress of a script, not library code
    return {"command": "faults", "config": base, "decimals": args.decimals, "clean_s": round(clean_s, 1), "tries": tries}


def executor_loss(args: argparse.Namespace) -> dict:
    """Kill one executor JVM mid-run on a two-worker standalone cluster, with each ``[spark] checkpoint`` mode."""
    from recsys_spark.checksum import compare
    from recsys_spark.localcluster import standalone

    work, base, clean_s, spark, ref = _tiny_reference(args)
    rng = random.Random(args.seed)
    runs = []
    for mode in ("local", "reliable"):
        out = work / mode
        run_args = [*base, "--set", f'paths.output="{out}"', "--set", f'spark.checkpoint="{mode}"']
        with standalone(workers=2, cores=1, memory="1g", root=work / f"cluster-{mode}") as url:
            log = (work / f"{mode}.log").open("w")
            t0 = time.perf_counter()
            proc = subprocess.Popen(_cmd(url, "pipeline", run_args), cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT)
            delay = rng.uniform(0.3, 0.7) * clean_s
            time.sleep(delay)
            found = subprocess.run(["pgrep", "-f", "CoarseGrainedExecutorBackend"], capture_output=True, text=True).stdout.split()
            killed = None
            if found and proc.poll() is None:
                killed = int(found[0])
                os.kill(killed, signal.SIGKILL)
            rc = proc.wait(timeout=1800)
            log.close()
        text = (work / f"{mode}.log").read_text(errors="replace")
        row = {"checkpoint": mode, "killed_after_s": round(delay, 1), "executor_killed": killed is not None, "exit": rc,
               "wall_s": round(time.perf_counter() - t0, 1), "checkpoint_block_lost": "Checkpoint block" in text}  # fmt: skip
        if rc == 0:
            got = _checksums(spark, f"{out}/generated", args.decimals)
            row["differ_rounded"] = len(compare(ref[args.decimals], got[args.decimals]))
        runs.append(row)
        print(json.dumps(row), flush=True)  # progress of a script, not library code
    return {"command": "executor-loss", "config": base, "decimals": args.decimals, "clean_s": round(clean_s, 1), "runs": runs}


def locality(args: argparse.Namespace) -> dict:
    """The tiny pipeline on a two-worker standalone cluster with Spark's default locality wait (3 s) and with none.

    Each executor has one core, so a task whose preferred executor is busy waits up to
    ``spark.locality.wait`` before it runs on the idle one; one fresh cluster per setting,
    the setting's runs in turn (``--tries`` each), outputs compared with each other."""
    from recsys_spark.checksum import compare
    from recsys_spark.localcluster import standalone

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    sets = [*TINY, *args.set]
    base = ["--config", "conf/local.toml", *[x for s in sets for x in ("--set", s)]]
    spark = _spark(work, "reliability locality")
    runs, sums = [], {}
    for wait in ("3s", "0"):
        with standalone(workers=2, cores=1, memory="1g", root=work / f"cluster-{wait}") as url:
            for i in range(args.tries):
                out = work / f"wait-{wait}-{i}"
                run_args = [*base, "--set", f'paths.output="{out}"']
                wall = _run(url, "pipeline", run_args, work / f"wait-{wait}-{i}.log", conf=(f"spark.locality.wait={wait}",))
                stages = {rel: m["wall_s"] for rel, m in manifests(out / "generated").items()}
                runs.append({"locality_wait": wait, "try": i, "wall_s": round(wall, 1), "stages_wall_s": stages})
                sums[(wait, i)] = _checksums(spark, f"{out}/generated", args.decimals)[args.decimals]
                print(json.dumps({k: v for k, v in runs[-1].items() if k != "stages_wall_s"}), flush=True)  # progress
    first = sums[("3s", 0)]
    return {"command": "locality", "config": base, "decimals": args.decimals, "runs": runs,
            "differ_rounded_from_first": {f"{w}-{i}": len(compare(first, s)) for (w, i), s in sums.items()}}  # fmt: skip


# the families whose stages need no SparkContext (docs/connect.md)
CONNECT_MODELS = 'models.names=["global_mean", "popularity", "bias", "item_knn", "user_knn", "content", "content_hybrid"]'


def connect(args: argparse.Namespace) -> dict:
    """The same pipeline on a classic local[2] session and as a Spark Connect client of a local[2] server."""
    from recsys_spark.localcluster import connect_server

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    base = [*MAKE_RUN, "--set", CONNECT_MODELS, *[x for s in args.set for x in ("--set", s)]]
    exe = str(ROOT / ".venv" / "bin" / "recsys-spark")
    env = {k: v for k, v in _env().items() if k != "SPARK_REMOTE"}
    runs = {}

    def run(name: str, extra: dict[str, str]) -> None:
        t0 = time.perf_counter()
        with (work / f"{name}.log").open("w") as out:
            cmd = [exe, "pipeline", *base, "--set", f'paths.output="{work / name}"']
            rc = subprocess.run(cmd, cwd=ROOT, env={**env, **extra}, stdout=out, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            raise SystemExit(f"{name} run failed (exit {rc}); see {work / name}.log")
        walls = {rel: m["wall_s"] for rel, m in manifests(work / name / "generated").items()}
        runs[name] = {"wall_s": round(time.perf_counter() - t0, 1), "stages": walls}
        print(json.dumps({name: runs[name]["wall_s"]}), flush=True)  # progress of a script, not library code

    run("classic", {})
    with connect_server("local[2]", work / "server", driver_memory="4g") as url:
        run("connect", {"SPARK_REMOTE": url})
    spark = _spark(work, "reliability connect")
    sums = {name: _checksums(spark, f"{work / name}/generated", args.decimals) for name in ("classic", "connect")}
    exact = _by_stage(sums["classic"][None], sums["connect"][None])
    rounded = _by_stage(sums["classic"][args.decimals], sums["connect"][args.decimals])
    stages = {s: {"entries": exact[s]["entries"], "differ_exact": exact[s]["differ"], "differ_rounded": rounded[s]["differ"]}
              for s in exact}  # fmt: skip
    return {"command": "connect", "config": base, "decimals": args.decimals, "runs": runs, "stages": stages}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["determinism", "faults", "executor-loss", "connect", "locality"])
    ap.add_argument("--decimals", type=int, default=9)
    ap.add_argument("--tries", type=int, default=3, help="faults: kill-and-rerun tries")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--work", default=str(ROOT / "build" / "reliability"))
    ap.add_argument("--reuse", action="store_true", help="determinism: compare the runs already under --work")
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    os.environ.setdefault("PYSPARK_PYTHON", str(ROOT / ".venv" / "bin" / "python"))
    commands = {"determinism": determinism, "faults": faults, "executor-loss": executor_loss, "connect": connect, "locality": locality}
    result = commands[args.command](args)
    write_result(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
