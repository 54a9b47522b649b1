"""A throw-away Spark standalone cluster on 127.0.0.1, from the installed pyspark: a master and N workers.

For tests and benchmarks that need executors in other JVMs on other "hosts"
than the driver (the pip pyspark ships no ``sbin`` start scripts, so the
daemons are started with ``bin/spark-class``).  Ports are chosen free, logs and
work folders go under ``root``, the daemons are stopped by their own pids at
the end, on failure too, and every wait is bounded.

    with standalone(workers=2, root="build/cluster") as url:
        subprocess.run(["./spark-submit.sh", "--master", url, "pipeline", ...])

or from a shell, the command run with ``$SPARK_MASTER_URL`` set::

    python -m recsys_spark.localcluster --workers 2 -- ./spark-submit.sh --master '$SPARK_MASTER_URL' pipeline

:func:`connect_server` starts a Spark Connect server the same way (``--connect local[2]`` from a
shell: the command gets ``$SPARK_REMOTE``, which the jobs' session factory follows)::

    python -m recsys_spark.localcluster --connect 'local[2]' -- recsys-spark pipeline --set 'models.names=["bias"]'
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spark_class() -> str:
    import pyspark

    return str(Path(pyspark.__file__).parent / "bin" / "spark-class")


def _stop(procs: list[subprocess.Popen], timeout: float = 30) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=timeout)


@contextlib.contextmanager
def standalone(
    workers: int = 2, cores: int = 1, memory: str = "1g", root: str | Path = "build/cluster", timeout: float = 120,
) -> Iterator[str]:  # fmt: skip
    """Start a master and ``workers`` workers (``cores`` and ``memory`` each); yield the master URL; stop them.

    Raises ``RuntimeError`` with the end of the logs when a daemon exits or the
    workers have not all registered within ``timeout`` seconds.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(root)}
    port = free_port()
    url = f"spark://127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []
    logs: list[Path] = []

    def start(name: str, args: list[str], extra_env: dict[str, str] | None = None) -> None:
        path = root / f"{name}.log"
        logs.append(path)
        with path.open("w") as out:  # the child keeps its own descriptor
            procs.append(subprocess.Popen([_spark_class(), *args], env={**env, **(extra_env or {})}, stdout=out, stderr=subprocess.STDOUT))

    try:
        start("master", ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port), "--webui-port", "0"])
        for i in range(workers):
            work = root / f"work-{i}"
            work.mkdir(exist_ok=True)
            start(
                f"worker-{i}",
                ["org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1", "--cores", str(cores), "--memory", memory,
                 "--webui-port", "0", "--work-dir", str(work)],
                {"SPARK_WORKER_DIR": str(work)},
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            registered = sum("Successfully registered with master" in p.read_text(errors="replace") for p in logs[1:])
            if registered == workers:
                break
            dead = [lp.name for lp, p in zip(logs, procs, strict=True) if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                tail = "\n".join(f"--- {lp.name}\n{lp.read_text(errors='replace')[-1500:]}" for lp in logs)
                why = f"{dead} exited" if dead else f"only {registered} of {workers} workers registered in {timeout:.0f} s"
                raise RuntimeError(f"standalone cluster did not start: {why}\n{tail}")
            time.sleep(0.5)
        log.info("standalone cluster at %s: %d workers x %d cores, %s each (logs in %s)", url, workers, cores, memory, root)
        yield url
    finally:
        _stop(procs)
        log.info("standalone cluster at %s stopped", url)


@contextlib.contextmanager
def connect_server(
    master: str = "local[2]", root: str | Path = "build/connect", driver_memory: str = "2g", timeout: float = 180,
    conf: dict[str, str] | None = None,
) -> Iterator[str]:  # fmt: skip
    """Start a Spark Connect server (``master`` runs its jobs) on 127.0.0.1; yield its ``sc://`` URL; stop it.

    Started with the installed pyspark's ``spark-submit`` in this process's working
    folder, so that relative paths mean the same to the client and the server; its
    Python workers use this interpreter.  Raises ``RuntimeError`` with the end of its
    log when it exits or does not listen within ``timeout`` seconds.
    """
    import pyspark

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"sc://127.0.0.1:{port}"
    settings = {
        "spark.connect.grpc.binding.address": "127.0.0.1",
        "spark.connect.grpc.binding.port": str(port),
        "spark.ui.enabled": "false",
        "spark.log.level": "WARN",
        "spark.checkpoint.dir": str((root / "checkpoints").resolve()),
        **(conf or {}),
    }
    server = "org.apache.spark.sql.connect.service.SparkConnectServer"
    cmd = [str(Path(pyspark.__file__).parent / "bin" / "spark-submit"), "--class", server, "--name", "recsys-spark connect",
           "--master", master, "--driver-memory", driver_memory]  # fmt: skip
    for key, value in settings.items():
        cmd += ["--conf", f"{key}={value}"]
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": os.environ.get("PYSPARK_PYTHON", sys.executable)}
    env.pop("SPARK_REMOTE", None)
    path = root / "server.log"
    with path.open("w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                why = f"it exited with {proc.returncode}" if proc.poll() is not None else f"no answer on port {port} in {timeout:.0f} s"
                raise RuntimeError(f"Spark Connect server did not start: {why}\n{path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.5)
        log.info("Spark Connect server at %s (master %s, log %s)", url, master, path)
        yield url
    finally:
        _stop([proc])
        log.info("Spark Connect server at %s stopped", url)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="run a command against a throw-away standalone cluster or Spark Connect server on 127.0.0.1")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cores", type=int, default=1, help="cores per worker")
    ap.add_argument("--memory", default="1g", help="memory per worker")
    ap.add_argument("--root", default=None, help="logs and work folders (default: build/cluster, build/connect)")
    ap.add_argument(
        "--connect", default=None, metavar="MASTER",
        help="start a Spark Connect server whose jobs run on MASTER (e.g. local[2]) instead; the command gets $SPARK_REMOTE",
    )  # fmt: skip
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ... ($SPARK_MASTER_URL is the master)")
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("no command given (after --)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.connect:
        with connect_server(args.connect, args.root or "build/connect") as url:
            return subprocess.run(command, env={**os.environ, "SPARK_REMOTE": url}).returncode
    with standalone(args.workers, args.cores, args.memory, args.root or "build/cluster") as url:
        command = [c.replace("$SPARK_MASTER_URL", url) for c in command]
        return subprocess.run(command, env={**os.environ, "SPARK_MASTER_URL": url}).returncode


if __name__ == "__main__":
    sys.exit(main())
