"""The DataFrame-only pipeline against a Spark Connect server on 127.0.0.1, and the stages that need a classic session."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SMALL = [
    "generate.n_users=80", "generate.n_items=120", "generate.n_ratings=3000",
    "generate.min_ratings_per_user=5", "generate.rank=3",
]  # fmt: skip
# the DataFrame stages: ingest, split, the baselines, the blend (learned on the validation part), the
# final lists, evaluate (the kNN and content models on Connect: benchmarks/reliability.py connect)
MODELS = 'models.names=["popularity", "bias"]'
DECIMALS = 9
EXACT = ("raw", "ingest", "splits", "predictions/popularity")  # no float is summed there: bit for bit


# The client sets the job's session settings on the server (local.toml: 4 shuffle partitions, AQE on);
# on 3,000 ratings and one core each extra task and re-planned stage is only latency, so the test holds
# them at the test session's (tests/conftest.py).  The stages' outputs do not depend on either: the
# spark-submit tests compare the jobs' own settings with a one-partition session.
TINY_SESSION = ["spark.shuffle_partitions=1", 'spark.conf={"spark.ui.enabled"="false","spark.sql.adaptive.enabled"="false"}']


def _args(out):
    sets = [*SMALL, MODELS, *TINY_SESSION, f'paths.output="{out}"', "publish.enabled=false", "tracking.enabled=false",
            "neighbors.max_neighbors=10"]  # fmt: skip
    return ["--config", str(ROOT / "conf" / "local.toml"), *[x for s in sets for x in ("--set", s)]]


def _cli(url, stage, *args):
    env = {**os.environ, "SPARK_REMOTE": url, "PYSPARK_PYTHON": sys.executable}
    exe = Path(sys.executable).parent / "recsys-spark"
    return subprocess.run([str(exe), stage, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from recsys_spark.localcluster import connect_server

    # one core and the test session's settings for tiny data (tests/conftest.py): `make test` runs
    # two shards side by side on two cores; the jobs' own settings run in test_spark_submit.py
    tiny = {"spark.sql.codegen.wholeStage": "false", "spark.sql.codegen.factoryMode": "NO_CODEGEN"}
    with connect_server(master="local[1]", root=tmp_path_factory.mktemp("connect"), driver_memory="1g", conf=tiny) as url:
        yield url


@pytest.fixture(scope="module")
def classic(spark, tmp_path_factory):
    """The reference: the same pipeline on the test process's classic session."""
    from recsys_spark.config import load_config
    from recsys_spark.pipeline import run_pipeline

    ref = tmp_path_factory.mktemp("classic")
    args = _args(ref)
    run_pipeline(spark, load_config(args[1], [a for a in args[2:] if a != "--set"]))
    return ref


def test_the_dataframe_stages_on_spark_connect_write_what_a_classic_session_writes(spark, server, classic, tmp_path):
    from recsys_spark.checksum import compare, output_checksums

    ref, out = classic, tmp_path / "connect"
    res = _cli(server, "pipeline", *_args(out))
    log = res.stdout + res.stderr
    assert res.returncode == 0, log[-3000:]
    assert f"spark connect session at {server}" in log
    assert "ran ['generate', 'ingest', 'split', 'predict:popularity', 'predict:bias', 'blend', 'final', 'evaluate']" in log

    for sub in EXACT:
        want = output_checksums(spark, f"{ref}/generated/{sub}")
        assert len(want) >= 2 and compare(want, output_checksums(spark, f"{out}/generated/{sub}")) == [], sub
    want, got = output_checksums(spark, f"{ref}/generated", DECIMALS), output_checksums(spark, f"{out}/generated", DECIMALS)
    assert sorted(want) == sorted(got) and compare(want, got) == []
    for name in ("popularity", "bias"):
        assert got[f"predictions/{name}/test/topn"]["rows"] > 0, name
    assert got["blend/test/topn"]["rows"] > 0 and got["final/recommendations"]["rows"] > 0
    assert got["evaluate/results.json"]["kind"] == "json"

    # a rerun finds every output up to date: the manifests a Connect client writes (through
    # pyarrow's file system) fingerprint the inputs as the classic session's Hadoop one does
    again = _cli(server, "pipeline", *_args(ref))
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert "pipeline finished: ran nothing" in again.stderr, again.stderr[-3000:]

    # one user's list from the final table
    shown = _cli(server, "recommend", "--user", "1", "--k", "3", *_args(out))
    assert shown.returncode == 0 and shown.stdout.startswith("user 1") and "  3. " in shown.stdout, shown.stderr[-2000:]


@pytest.mark.parametrize("stage", ["predict", "factorize"])
def test_a_stage_that_needs_a_classic_session_stops_with_one_clear_error(server, classic, stage):
    res = _cli(server, stage, "--model", "svd", *_args(classic))
    errors = [line for line in res.stderr.splitlines() if " ERROR " in line]
    assert res.returncode == 2, res.stderr[-3000:]
    assert len(errors) == 1, res.stderr[-3000:]
    assert "svd (our factorization engine's RDDs) needs a classic Spark session" in errors[0] and "Spark Connect session" in errors[0]
    assert "Traceback" not in res.stderr
    assert not list(classic.rglob("*.tmp-*")), "the failed stage left its temporary folder"


def test_mllib_als_runs_on_spark_connect(server, classic, tmp_path):
    # MLlib's estimators run on the server through Connect's ML support (the content featurizer's
    # pipeline too); the checkpoint folder is the server's
    quick = tmp_path / "quick"
    quick.mkdir()
    (quick / "als.toml").write_text("[params]\nrank = 4\nmax_iter = 3\n")
    res = _cli(server, "predict", "--model", "als", *_args(classic), "--set", f'models.models_dir="{quick}"')
    assert res.returncode == 0, res.stderr[-3000:]
    assert "als test: " in res.stderr and (classic / "generated/predictions/als/test/topn/_SUCCESS").is_file()
