"""The jobs through spark-submit.sh: local[2], local-cluster[2,1,1024] and a standalone master."""

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from recsys_spark.stages import run_generate
from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SMALL = [
    "generate.n_users=80", "generate.n_items=120", "generate.n_ratings=3000",
    "generate.min_ratings_per_user=5", "generate.rank=3",
]  # fmt: skip


@pytest.fixture(scope="module")
def raw_data(spark, tmp_path_factory):
    from recsys_spark.config import load_config

    out = tmp_path_factory.mktemp("gen")
    cfg = load_config(None, [f'paths.output="{out}"', *SMALL])
    run_generate(spark, cfg)
    return cfg.dataset_path


def submit(master, job, *args, timeout=600):
    env = {**os.environ, "PYTHON": sys.executable, "PYSPARK_PYTHON": sys.executable}
    cmd = [str(ROOT / "spark-submit.sh"), "--master", master, "--conf", "spark.ui.enabled=false", job, *args]
    # spark-submit merges the Python driver's stderr into its stdout
    return subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)


def test_jobs_under_spark_submit_and_on_local_cluster(raw_data, tmp_path):
    # ingest and split are DataFrame-only (no Python runs in executors): they run under plain
    # local[2] spark-submit, and ingest on a real standalone master below.  The jobs whose
    # Python does run in executors (the kNN block kernel, our factorization engine) run on
    # local-cluster, whose executors are separate JVMs with their own Python, as on a cluster.
    # (All five on local-cluster: 204 s alone, 342 s in the full test run.)
    raw = tmp_path / "raw"
    shutil.copytree(raw_data, raw)
    common = [
        "--config", str(ROOT / "conf" / "local.toml"),
        "--set", f'paths.output="{tmp_path / "out"}"',
        "--set", f'dataset.path="{raw}"',
        "--set", "split.n_negatives=5", *[x for s in SMALL for x in ("--set", s)],
    ]  # fmt: skip
    res = submit("local[2]", "ingest", *common)
    assert res.returncode == 0, res.stdout[-3000:]
    res = submit("local[2]", "split", *common)
    assert res.returncode == 0, res.stdout[-3000:]

    ingest = json.loads((tmp_path / "out/generated/ingest/_manifest.json").read_text())
    (split_dir,) = (tmp_path / "out/generated/splits").iterdir()
    assert split_dir.name.startswith("stratified-")
    split = json.loads((split_dir / "_manifest.json").read_text())
    r = ingest["counts"]["tables"]["ratings"]
    assert r["read"] == r["kept"] + r["quarantined"] + r["deduplicated"] > 2500
    c = split["counts"]
    assert c["train"] + c["valid"] + c["test"] == c["input"] == r["kept"]
    assert c["negatives"] == 5 * c["test"]

    # (a rerun that skips is checked in-process: tests/unit/test_stages.py; one JVM start less here)

    master = "local-cluster[2,1,1024]"
    # the block kernel's Python runs in separate executor JVMs
    res = submit(master, "neighbors", *common, "--set", "neighbors.max_neighbors=10")
    assert res.returncode == 0, res.stdout[-3000:]
    # the session reports the master spark-submit gave it, not the config's
    assert f"master={master}" in res.stdout
    nb_manifest = json.loads((tmp_path / "out/generated/neighbors/item_knn/_manifest.json").read_text())
    nb = nb_manifest["counts"]
    assert nb["pairs"] > 0 and nb["ratings"] == c["train"] + c["valid"]
    # the job ran with the tuned defaults shipped in the zip (the block kernel), not the code's (join)
    tuned = tomllib.loads((ROOT / "recsys_spark/conf/models/item_knn.toml").read_text())["params"]
    assert nb_manifest["config"]["extra"]["params"] == {**tuned, "max_neighbors": 10}
    assert tuned["kernel"] == "blocks"
    # our factorization engine: RDD closures, broadcasts and numpy kernels in separate executors
    models = tmp_path / "models"
    models.mkdir()
    (models / "svdpp_time.toml").write_text("[params]\nrank = 3\nn_epochs = 2\ntime_bins = 4\n")
    res = submit(master, "factorize", *common, "--set", f'models.models_dir="{models}"', "--set", 'factorize.model="svdpp_time"')
    assert res.returncode == 0, res.stdout[-3000:]
    fz = json.loads((tmp_path / "out/generated/factors/svdpp_time/_manifest.json").read_text())["counts"]
    assert fz["rank"] == 3 and fz["users_with_factors"] == fz["users"] and fz["ratings"] == c["train"] + c["valid"]


def test_bad_input_under_spark_submit_is_one_clear_line(tmp_path):
    res = submit("local[2]", "ingest", "--set", "dataset.kind=ml-100k", "--set", f'dataset.path="{tmp_path}/none"')
    assert res.returncode == 2
    errors = [line for line in res.stdout.splitlines() if " ERROR " in line]
    assert len(errors) == 1, res.stdout[-3000:]
    assert "ERROR recsys_spark.jobs.ingest: ingest failed: dataset 'ml-100k' (ml-100k): input file(s) not found" in errors[0]
    assert "none/u.data" in errors[0] and "none/u.item" in errors[0]
    assert "Traceback" not in res.stdout


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def standalone_master(tmp_path):
    """A throw-away standalone master + one worker on 127.0.0.1 (pip pyspark ships no sbin start scripts)."""
    import time

    import pyspark

    spark_class = str(Path(pyspark.__file__).parent / "bin" / "spark-class")
    port = _free_port()
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_WORKER_DIR": str(tmp_path / "work")}
    logs = (tmp_path / "master.log").open("w"), (tmp_path / "worker.log").open("w")
    master = subprocess.Popen(
        [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port), "--webui-port", "0"],
        env=env, stdout=logs[0], stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"spark://127.0.0.1:{port}"
    worker = subprocess.Popen(
        [spark_class, "org.apache.spark.deploy.worker.Worker", url, "--cores", "2", "--memory", "2g", "--webui-port", "0"],
        env=env, stdout=logs[1], stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.time() + 90
        while "Successfully registered with master" not in (tmp_path / "worker.log").read_text():
            if time.time() > deadline or worker.poll() is not None or master.poll() is not None:
                pytest.fail("standalone master/worker did not start:\n" + (tmp_path / "worker.log").read_text()[-2000:])
            time.sleep(1)
        yield url
    finally:
        for p in (worker, master):
            p.terminate()
        for p in (worker, master):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        for f in logs:
            f.close()


def test_ingest_on_a_standalone_master(standalone_master, raw_data, tmp_path):
    args = [
        "--config", str(ROOT / "conf" / "local.toml"),
        "--set", f'paths.output="{tmp_path / "out"}"', "--set", f'dataset.path="{raw_data}"',
    ]  # fmt: skip
    res = submit(standalone_master, "ingest", *args)
    assert res.returncode == 0, res.stdout[-3000:]
    assert f"master={standalone_master}" in res.stdout
    manifest = json.loads((tmp_path / "out/generated/ingest/_manifest.json").read_text())
    assert manifest["counts"]["ratings"] > 2500
