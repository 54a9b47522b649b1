"""The edges a new user meets: odd input files, checks before Spark starts, string ids, tracking off-machine.

Each edge input gives one clear error (naming the file, line and the setting
that fixes it) or a quarantine reason; the pre-Spark checks run without a
session.
"""

from __future__ import annotations

import gzip
import logging
import re
from pathlib import Path

import pytest

from recsys_spark import cli
from recsys_spark.config import ConfigError
from recsys_spark.ingest import IngestError
from recsys_spark.io.datasets import DataFormatError, dataset_spec, read_dataset
from recsys_spark.io.precheck import check_inputs
from tests.conftest import ROOT, write

HEADER = "userId,movieId,rating,timestamp\n"
ROWS = "1,10,4,100\n2,20,3,200\n3,30,5,300\n"


@pytest.fixture
def errors():
    """ERROR records of the project's loggers (they do not propagate to the root, so caplog misses them)."""
    got: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            got.append(record)

    handler, pkg = Keep(level=logging.ERROR), logging.getLogger("recsys_spark")
    pkg.addHandler(handler)
    yield got
    pkg.removeHandler(handler)


def generic(cfg_factory, ratings: str, *extra: str):
    return cfg_factory(
        "dataset.kind=generic", "dataset.name=mine", f'dataset.generic.ratings="{ratings}"',
        "dataset.rating_min=0.5", "dataset.rating_max=5.0", "tracking.enabled=false", *extra,
    )  # fmt: skip


def ingest(spark, cfg):
    from recsys_spark import stages

    return stages.run_ingest(spark, cfg, force=True)["counts"]


def quarantine(spark, cfg, rejected: bool = False):
    where = cfg.stage_path("ingest") + (".rejected" if rejected else "")
    return {r["line_no"]: r["reason"] for r in spark.read.parquet(f"{where}/quarantine").collect()}


# -- checks before Spark (no session) ---------------------------------------------------
def test_a_header_in_a_file_read_without_one_names_the_setting(tmp_path, cfg_factory):
    p = write(tmp_path / "r.csv", HEADER + ROWS)
    cfg = generic(cfg_factory, p, "dataset.generic.header=false", "dataset.generic.columns={user=0,item=1,rating=2,timestamp=3}")
    with pytest.raises(DataFormatError, match=r"r.csv line 1: .* looks like a header .* set dataset.generic.header = true"):
        check_inputs(dataset_spec(cfg))


def test_a_file_without_the_declared_header_says_line_1_looks_like_data(tmp_path, cfg_factory):
    p = write(tmp_path / "r.csv", ROWS)
    with pytest.raises(DataFormatError, match=r"line 1 looks like data: .* set dataset.generic.header = false"):
        check_inputs(dataset_spec(generic(cfg_factory, p)))


def test_empty_folder_zero_byte_parquet_binary_and_unreadable_files(tmp_path, cfg_factory, monkeypatch):
    (tmp_path / "empty").mkdir()
    write(tmp_path / "empty" / "_SUCCESS", "")
    with pytest.raises(DataFormatError, match=r"empty: the folder has no data files"):
        check_inputs(dataset_spec(generic(cfg_factory, str(tmp_path / "empty"))))
    write(tmp_path / "zero.parquet", "")
    with pytest.raises(DataFormatError, match=r"zero.parquet: 0 bytes, not a Parquet file"):
        check_inputs(dataset_spec(generic(cfg_factory, str(tmp_path / "zero.parquet"), 'dataset.generic.format="parquet"')))
    (tmp_path / "r.csv").write_bytes(b"PAR1\x15\x00\x00,x\n")
    with pytest.raises(DataFormatError, match=r"r.csv line 1: NUL bytes -- a binary file"):
        check_inputs(dataset_spec(generic(cfg_factory, str(tmp_path / "r.csv"))))
    good = write(tmp_path / "ok.csv", HEADER + ROWS)
    check_inputs(dataset_spec(generic(cfg_factory, good)))  # readable: no error
    monkeypatch.setattr("recsys_spark.io.precheck.os.access", lambda path, mode: False)  # tests may run as root
    with pytest.raises(DataFormatError, match=r"ok.csv: cannot be read \(permission denied"):
        check_inputs(dataset_spec(generic(cfg_factory, good)))


def test_relative_generic_paths_resolve_under_dataset_path(tmp_path, cfg_factory):
    write(tmp_path / "shop" / "ratings.csv", HEADER + ROWS)
    cfg = generic(cfg_factory, "ratings.csv", f'dataset.path="{tmp_path / "shop"}"')
    assert dataset_spec(cfg).files["ratings"].path == f"{tmp_path / 'shop'}/ratings.csv"
    check_inputs(dataset_spec(cfg))
    absolute = generic(cfg_factory, "/elsewhere/r.csv", f'dataset.path="{tmp_path}"')
    assert dataset_spec(absolute).files["ratings"].path == "/elsewhere/r.csv"


def test_generic_keys_and_settings_are_checked_by_name(tmp_path, cfg_factory):
    p = write(tmp_path / "r.csv", HEADER + ROWS)
    with pytest.raises(ValueError, match=r"dataset.generic.columns must map \['rating'\]"):
        dataset_spec(generic(cfg_factory, p, 'dataset.generic.columns={user="userId",item="movieId"}'))
    with pytest.raises(ConfigError, match=r"dataset.generic.id_types' has unknown id column\(s\) \['movie'\]"):
        generic(cfg_factory, p, 'dataset.generic.id_types={movie="string"}')
    with pytest.raises(ConfigError, match=r"dataset.generic.delimiter' applies to format = 'csv' only"):
        generic(cfg_factory, p, 'dataset.generic.format="tsv"', 'dataset.generic.delimiter=";"')
    with pytest.raises(ConfigError, match=r"dataset.generic.decimal' must be one of"):
        generic(cfg_factory, p, 'dataset.generic.decimal=";"')


def test_a_job_with_a_bad_input_fails_before_spark_starts_with_one_error(tmp_path, monkeypatch, errors):
    def no_session(*a, **k):
        raise AssertionError("a Spark session was started")

    monkeypatch.setattr("recsys_spark.spark.get_spark", no_session)
    base = [
        "--set", f'paths.output="{tmp_path / "out"}"', "--set", "dataset.kind=generic", "--set", "dataset.rating_min=1.0",
        "--set", "dataset.rating_max=5.0", "--set", "tracking.enabled=false",
    ]  # fmt: skip
    other_header = write(tmp_path / "h.csv", "uid,iid,r\n1,2,3\n")
    cases = {
        r"input file\(s\) not found: .*nope.csv": f'dataset.generic.ratings="{tmp_path / "nope.csv"}"',
        "column 'userId' .* is not in the header": f'dataset.generic.ratings="{other_header}"',
        "needs dataset.generic.ratings": 'dataset.generic.format="csv"',
    }
    for message, setting in cases.items():
        errors.clear()
        assert cli.run_job("ingest", [*base, "--set", setting]) == cli.EXIT_BAD_INPUT
        lines = [r.getMessage() for r in errors]
        assert len(lines) == 1 and re.search(message, lines[0]), lines


# -- MLflow tracking when the output is not on this machine -------------------------------
def test_a_non_local_output_needs_a_tracking_uri_and_creates_no_local_folder(tmp_path, cfg_factory, monkeypatch):
    from recsys_spark import tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    cfg = cfg_factory('paths.output="hdfs:///user/recsys/output"')
    with pytest.raises(ConfigError, match=r"paths.output = 'hdfs:///user/recsys/output' is not on this machine.*tracking.uri"):
        tracking.tracking_uri(cfg)
    assert not (tmp_path / "hdfs:").exists()
    assert tracking.tracking_uri(cfg_factory('paths.output="s3a://b/o"', 'tracking.uri="http://mlflow:5000"'))[0] == "http://mlflow:5000"
    tracking.check(cfg_factory('paths.output="s3a://b/o"', "tracking.enabled=false"), "pipeline")  # nothing to log: fine
    monkeypatch.setenv("DATABRICKS_RUNTIME_VERSION", "15.4")
    assert tracking.tracking_uri(cfg)[0] == "databricks"
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION")
    local = tracking.tracking_uri(cfg_factory(f'paths.output="file://{tmp_path / "o"}"'))[0]
    assert local == f"sqlite:///{tmp_path / 'o' / 'mlflow.db'}"

    monkeypatch.setattr("recsys_spark.spark.get_spark", lambda *a, **k: pytest.fail("a Spark session was started"))
    assert cli.run_job("evaluate", ["--set", 'paths.output="hdfs:///user/recsys/output"']) == cli.EXIT_BAD_INPUT


# -- what the Spark-side reader and ingest make of odd files ------------------------------
def test_crlf_bom_gzip_and_a_folder_of_part_files_read_like_a_plain_file(spark, tmp_path, cfg_factory):
    (tmp_path / "crlf_bom.csv").write_bytes(("\ufeff" + HEADER + ROWS).replace("\n", "\r\n").encode())
    (tmp_path / "r.csv.gz").write_bytes(gzip.compress((HEADER + ROWS).encode()))
    write(tmp_path / "parts" / "part-00000.csv", HEADER + ROWS[:22])
    write(tmp_path / "parts" / "part-00001.csv", HEADER + ROWS[22:])
    write(tmp_path / "parts" / "_SUCCESS", "")
    for name in ("crlf_bom.csv", "r.csv.gz", "parts"):
        cfg = generic(cfg_factory, str(tmp_path / name), f"dataset.name={name.replace('.', '_')}")
        check_inputs(dataset_spec(cfg))
        counts = ingest(spark, cfg)["tables"]["ratings"]
        assert (counts["read"], counts["kept"], counts["quarantined"]) == (3, 3, 0), name
        ratings = spark.read.parquet(cfg.stage_path("ingest", "ratings")).orderBy("rating").collect()
        assert [r["rating"] for r in ratings] == [3.0, 4.0, 5.0], name
        assert sorted(r["user_id"] for r in spark.read.parquet(cfg.stage_path("ingest", "user_map")).collect()) == ["1", "2", "3"]


def test_integer_ids_refuse_fractions_signs_and_ids_beyond_int64(spark, tmp_path, cfg_factory):
    bad = "1.0,10,4,1\n-2,10,4,1\n99999999999999999999,10,4,1\nabc,10,4,1\n+7,11,4,1\n9223372036854775807,12,4,1\n"
    p = write(tmp_path / "r.csv", HEADER + ROWS * 40 + bad)
    counts = ingest(spark, generic(cfg_factory, p, "ingest.max_quarantine_fraction=0.5"))
    assert counts["tables"]["ratings"]["quarantined"] == 4
    cfg = generic(cfg_factory, p)
    reasons = {k: v for k, v in quarantine(spark, cfg).items() if k > 121}
    assert reasons == {
        122: "non-integer user id: '1.0'", 123: "negative user id: '-2'",
        124: "user id beyond int64: '99999999999999999999'", 125: "non-numeric user id: 'abc'",
    }  # fmt: skip
    users = {r["user_id"] for r in spark.read.parquet(cfg.stage_path("ingest", "user_map")).collect()}
    assert {"7", "9223372036854775807"} <= users  # '+7' is the integer 7; the largest int64 is an id


def test_a_decimal_comma_is_a_reason_with_the_setting_or_read_when_declared(spark, tmp_path, cfg_factory, errors):
    p = write(tmp_path / "r.csv", 'userId;movieId;rating;timestamp\n1;10;"4,5";1\n2;10;3;1\n')
    cfg = generic(cfg_factory, p, 'dataset.generic.delimiter=";"')
    with pytest.raises(IngestError, match=r'unparsable rating \(1\); ratings such as "4,5" need'):
        ingest(spark, cfg)
    assert quarantine(spark, cfg, rejected=True) == {2: "unparsable rating: '4,5' (a decimal comma?)"}
    assert [r.getMessage() for r in errors] == [f"  rejected file://{p}:2 unparsable rating: '4,5' (a decimal comma?)"]

    cfg = generic(cfg_factory, p, 'dataset.generic.delimiter=";"', 'dataset.generic.decimal=","')
    ingest(spark, cfg)
    assert sorted(r["rating"] for r in spark.read.parquet(cfg.stage_path("ingest", "ratings")).collect()) == [3.0, 4.5]
    assert not Path(cfg.stage_path("ingest") + ".rejected").exists()  # the successful rerun removed the stale rejection


def test_a_zero_byte_parquet_is_a_format_error_on_the_spark_side_too(spark, tmp_path, cfg_factory):
    write(tmp_path / "zero.parquet", "")
    cfg = generic(cfg_factory, str(tmp_path / "zero.parquet"), 'dataset.generic.format="parquet"')
    with pytest.raises(DataFormatError, match=r"zero.parquet: cannot be read as Parquet"):
        read_dataset(spark, dataset_spec(cfg))


def test_string_ids_end_to_end_through_ingest_a_model_and_the_final_lists(spark, shop_pipeline):
    from recsys_spark.stages.final import user_rows

    cfg, res, lines = shop_pipeline  # the generic table with string ids (tests/conftest.py)
    assert res["ingest"]["counts"]["tables"]["ratings"]["kept"] == 200
    rows = user_rows(spark, cfg, "user-c").orderBy("rank").collect()
    assert rows and all(r["item_id"].startswith("sku_") for r in rows)
    rated = {line.split(",")[1] for line in lines if line.startswith("user-c,")}
    assert not rated & {r["item_id"] for r in rows}  # never an item the user rated


# -- the window warning, the helper script, notebooks -------------------------------------
def test_no_catalogue_wide_window_without_a_partition():
    """Spark warns (and moves every row to one partition) for a window with no PARTITION BY."""
    offenders = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in sorted((ROOT / "recsys_spark").rglob("*.py"))
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if "Window.orderBy(" in line
    ]
    assert offenders == []


def test_spark_submit_help_is_the_usage_only():
    import subprocess

    out = subprocess.run(["bash", str(ROOT / "spark-submit.sh"), "--help"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("Run a recsys-spark job with spark-submit") and "set -euo" not in out
    assert "./spark-submit.sh --zip" in out


def test_notebooks_install_the_wheel_first_and_write_files_through_the_setup():
    for p in sorted((ROOT / "notebooks").glob("week*.py")):
        text = p.read_text()
        cells = text.split("# COMMAND ----------")
        assert cells[0].strip().splitlines()[1].startswith("# MAGIC %pip install "), p.name
        for bad in ("sparkContext", "_jvm", ".savefig("):
            assert bad not in text, f"{p.name} uses {bad}"


def test_save_figure_writes_through_the_hadoop_file_system_for_a_uri_output(spark, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from recsys_spark.notebook import Setup

    fig, ax = plt.subplots()
    ax.plot([1, 2, 3])
    for output, where in ((f"file://{tmp_path / 'uri'}", tmp_path / "uri"), (str(tmp_path / "plain"), tmp_path / "plain")):
        nb = Setup(None, spark, output, {}, {})
        dest = nb.save_figure(fig, "plots/fig.png")
        assert dest == f"{output}/plots/fig.png"
        assert (where / "plots" / "fig.png").stat().st_size > 1000
    plt.close(fig)
