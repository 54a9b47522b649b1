"""Shared fixtures: one local[2] Spark session per test session, data helpers."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    local_dir = tmp_path_factory.mktemp("spark-local")
    session = (
        SparkSession.builder.master("local[2]")
        .appName("recsys-spark-tests")
        # One partition: `make test` runs two shards side by side on two cores, so a second task per
        # stage buys no parallelism, only scheduling.  tests/unit/test_factorization.py alone:
        # 334 s with two partitions, 246 s with one.  A test about partitioning repartitions itself.
        .config("spark.sql.shuffle.partitions", os.environ.get("RECSYS_TEST_PARTITIONS", "1"))
        .config("spark.default.parallelism", os.environ.get("RECSYS_TEST_PARTITIONS", "1"))
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.local.dir", str(local_dir))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.memory", "2g")
        # Tiny data: compiling generated code for every new query costs more than it saves, and
        # adaptive re-planning adds stages.  A JFR profile of test_content.py put a fifth of the
        # driver's CPU in janino; test_content.py took 155-166 s with Spark's defaults, 140 s
        # with interpreted expressions, 123 s with AQE off as well; `make test` 31m49 -> 21m18.
        # The jobs' own settings (codegen with fallback, AQE on) still run in the spark-submit tests.
        .config("spark.sql.codegen.wholeStage", "false")
        .config("spark.sql.codegen.factoryMode", "NO_CODEGEN")
        .config("spark.sql.adaptive.enabled", "false")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    session.sparkContext.setCheckpointDir(str(tmp_path_factory.mktemp("checkpoints")))
    yield session
    session.stop()


def data_dir() -> Path | None:
    d = os.environ.get("RECSYS_DATA_DIR")
    return Path(d) if d else None


@pytest.fixture(scope="session")
def movielens_dir():
    """RECSYS_DATA_DIR with the shared MovieLens sets; under CI=true their absence fails."""
    d = data_dir()
    needed = ["ml-100k/u.data", "ml-latest-small/ratings.csv"]
    if d is None or not all((d / n).is_file() for n in needed):
        msg = f"MovieLens data not found under RECSYS_DATA_DIR={d} (need {needed})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return d


@pytest.fixture
def cfg_factory(tmp_path):
    """Build a Config whose outputs go to a temporary directory."""
    from recsys_spark.config import load_config

    def make(*overrides: str):
        return load_config(None, [f"paths.output={str(tmp_path / 'output')!r}".replace("'", '"'), *overrides])

    return make


def write(path: Path, text: str, encoding: str = "utf-8") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return str(path)


@pytest.fixture(scope="session")
def shop_pipeline(spark, tmp_path_factory):
    """The whole pipeline, publish included, once per test process, on a generic table with string ids.

    20 users ``user-a`` .. ``user-t`` rate 10 of 25 items ``sku_000`` .. ``sku_024``
    (1-5 stars, seed 3); no items or users file, so items have no titles or
    genres.  Returns ``(cfg, results, lines)``; the tests read, never rerun it.
    """
    import random

    from recsys_spark.config import load_config
    from recsys_spark.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("shop")
    rng = random.Random(3)
    users = [f"user-{c}" for c in "abcdefghijklmnopqrst"]
    items = [f"sku_{i:03d}" for i in range(25)]
    lines = [f"{u},{i},{rng.choice([1, 2, 3, 4, 5])},{t}" for t, (u, i) in enumerate((u, i) for u in users for i in rng.sample(items, 10))]
    ratings = write(root / "shop.csv", "uid,sku,stars,ts\n" + "\n".join(lines) + "\n")
    cfg = load_config(None, [
        f'paths.output="{root / "output"}"', "dataset.kind=generic", "dataset.name=shop", f'dataset.generic.ratings="{ratings}"',
        'dataset.generic.columns={user="uid",item="sku",rating="stars",timestamp="ts"}',
        'dataset.generic.id_types={user="string",item="string"}', "dataset.rating_min=1.0", "dataset.rating_max=5.0",
        'models.names=["popularity","bias"]', "final.buckets=2",
    ])  # fmt: skip
    return cfg, run_pipeline(spark, cfg), lines
