"""Run a benchmark child process and sample its memory by phase.

The child prints ``MARK <phase>`` lines as it moves between phases and one
``RESULT <json>`` line at the end.  The parent samples, every 0.2 s, the
resident memory of the child's Python process (the driver) and of the JVMs it
started (in local mode the JVM is driver and executors in one), keeping the
peak per phase.  Each child is a fresh JVM, so peaks are per run.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import psutil


def tree_rss(proc: psutil.Process) -> tuple[int, int]:
    """(driver Python RSS, JVM RSS) in bytes; Python workers the JVM forks are not the driver."""
    py = jvm = 0
    try:
        py = proc.memory_info().rss
        for p in proc.children(recursive=False):
            if Path(p.exe()).name == "java":
                jvm += p.memory_info().rss
    except psutil.Error:
        pass
    return py, jvm


def manifests(root: Path) -> dict[str, dict]:
    """Every finished stage output's manifest under ``root`` (in-flight ``.tmp-`` folders left out), by relative path."""
    found = {}
    for m in sorted(root.rglob("_manifest.json")):
        rel = m.parent.relative_to(root).as_posix()
        if ".tmp-" not in rel:
            found[rel] = json.loads(m.read_text())
    return found


def write_result(result: dict, out: str | None) -> None:
    """Print ``result`` as indented, key-sorted JSON and, with ``out``, write it there too (folders made)."""
    text = json.dumps(result, indent=1, sort_keys=True)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    print(text)


def run_child(cmd: list[str], cwd: Path, name: str, env: dict[str, str] | None = None) -> tuple[dict, dict[str, tuple[int, int]]]:
    """Run ``cmd`` (with ``env`` added to this process's environment); return its RESULT and
    ``{phase: (peak Python bytes, peak JVM bytes)}``."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=cwd, env={**os.environ, **(env or {})})
    ps = psutil.Process(proc.pid)
    state = {"phase": "setup"}
    peaks: dict[str, tuple[int, int]] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            py, jvm = tree_rss(ps)
            old = peaks.get(state["phase"], (0, 0))
            peaks[state["phase"]] = (max(old[0], py), max(old[1], jvm))
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    result = None
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("MARK "):
            state["phase"] = line.split()[1]
        elif line.startswith("RESULT "):
            result = json.loads(line[len("RESULT ") :])
    proc.wait()
    stop.set()
    th.join()
    if proc.returncode != 0 or result is None:
        raise SystemExit(f"{name}: child failed with exit code {proc.returncode}")
    return result, peaks
