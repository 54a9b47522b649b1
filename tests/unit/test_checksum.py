"""Output checksums, the fault switch and the clean-up after a killed write, on tiny inline data."""

import json
import unittest.mock
from pathlib import Path

import pytest

from recsys_spark import faults
from recsys_spark.checksum import compare, output_checksums, table_checksum
from recsys_spark.io import fs
from recsys_spark.stages import run_stage

ROWS = [(1, 10, 4.5, {"a": 1.0}), (1, 11, 3.0, {"b": 2.0}), (2, 10, 1.25, {}), (3, 12, 0.0, {"a": 0.5, "c": 1.0})]
SCHEMA = "user_idx int, item_idx int, score double, extra map<string,double>"


def test_a_table_checksum_ignores_row_order_and_files_but_sees_every_value(spark):
    base = table_checksum(spark.createDataFrame(ROWS, SCHEMA))
    shuffled = spark.createDataFrame(list(reversed(ROWS)), SCHEMA).repartition(3)
    assert table_checksum(shuffled) == base and base["rows"] == 4
    changed = [*ROWS[:3], (3, 12, 0.0, {"a": 0.5, "c": 2.0})]  # one value inside a map
    assert table_checksum(spark.createDataFrame(changed, SCHEMA))["checksum"] != base["checksum"]
    # a row twice is not the row once: a multiset, like sorted rows
    assert table_checksum(spark.createDataFrame([*ROWS, ROWS[0]], SCHEMA))["rows"] == 5
    swapped = [(1, 10, 3.0, {"a": 1.0}), (1, 11, 4.5, {"b": 2.0}), *ROWS[2:]]  # same values, other rows
    assert table_checksum(spark.createDataFrame(swapped, SCHEMA))["checksum"] != base["checksum"]


def test_floats_compare_exactly_unless_rounded_and_timings_are_left_out(spark):
    near = [(u, i, s + 1e-12, m) for u, i, s, m in ROWS]
    exact, close = spark.createDataFrame(ROWS, SCHEMA), spark.createDataFrame(near, SCHEMA)
    assert table_checksum(exact)["checksum"] != table_checksum(close)["checksum"]
    assert table_checksum(exact, decimals=9) == table_checksum(close, decimals=9)
    assert table_checksum(spark.createDataFrame([(-0.0,)], "x double")) == table_checksum(spark.createDataFrame([(0.0,)], "x double"))
    timed = spark.createDataFrame([("als", 0.91, 12.5), ("bias", 0.95, 1.0)], "model string, rmse double, fit_s double")
    retimed = spark.createDataFrame([("als", 0.91, 99.0), ("bias", 0.95, 2.0)], "model string, rmse double, fit_s double")
    assert table_checksum(timed) == table_checksum(retimed) and table_checksum(timed)["columns"] == ["model", "rmse"]
    assert table_checksum(timed, skip_volatile=False) != table_checksum(retimed, skip_volatile=False)


def _run(spark, root: Path, rmse: float, fit_s: float, created: str):
    spark.createDataFrame(ROWS, SCHEMA).write.mode("overwrite").parquet(str(root / "ds/predict/t"))
    (root / "ds/evaluate").mkdir(parents=True, exist_ok=True)
    (root / "ds/evaluate/results.json").write_text(json.dumps({"models": {"als": {"rmse": rmse, "fit_s": fit_s}}, "created": created}))
    (root / "ds/evaluate/results.md").write_text(f"als {rmse} in {fit_s} s\n")
    (root / "ds/evaluate/_manifest.json").write_text(json.dumps({"created": created}))
    (root / "ds/notes.txt").write_text("same\n")
    return output_checksums(spark, str(root / "ds"))


def test_output_checksums_cover_tables_and_results_not_what_records_the_run(spark, tmp_path):
    a = _run(spark, tmp_path / "a", 0.91, 3.0, "monday")
    assert set(a) == {"predict/t", "evaluate/results.json", "notes.txt"}
    assert a["predict/t"]["kind"] == "table" and a["predict/t"]["rows"] == 4
    assert compare(a, _run(spark, tmp_path / "b", 0.91, 7.5, "tuesday")) == []
    diffs = compare(a, _run(spark, tmp_path / "c", 0.92, 3.0, "monday"))
    assert len(diffs) == 1 and diffs[0].startswith("evaluate/results.json:")
    assert compare(a, {k: v for k, v in a.items() if k != "notes.txt"}) == ["notes.txt: only in the first run"]
    assert compare(a, {}, ignore=("*",)) == []


@pytest.mark.parametrize("backend", ["hadoop", "arrow"])
def test_recover_removes_an_unfinished_write_and_restores_a_swap_cut_short(spark, tmp_path, monkeypatch, backend):
    if backend == "arrow":  # what a Spark Connect client uses
        monkeypatch.setattr(fs, "backend", lambda spark: fs._Arrow())
    tmp_path = tmp_path / "runs[1]{a}"  # glob characters in the path: matched by name, not as a pattern
    tmp_path.mkdir()
    out = tmp_path / "stage"
    (tmp_path / "stage.tmp-dead0001").mkdir()
    (tmp_path / "stage.tmp-dead0001/part-0").write_text("half")
    old = tmp_path / "stage.old-dead0002"
    old.mkdir()
    (old / "_manifest.json").write_text("{}")
    done = fs.recover(spark, str(out))
    assert done == {"tmp_deleted": 1, "old_restored": 1, "old_deleted": 0}
    assert (out / "_manifest.json").is_file() and not old.exists() and not (tmp_path / "stage.tmp-dead0001").exists()
    (tmp_path / "stage.old-dead0003").mkdir()  # the output is there: this is the replaced copy
    assert fs.recover(spark, str(out))["old_deleted"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["stage"]
    assert fs.recover(spark, str(out)) == {"tmp_deleted": 0, "old_restored": 0, "old_deleted": 0}


def test_a_spark_connect_client_sees_the_files_a_classic_session_sees(spark, tmp_path):
    # The Connect client reaches storage through pyarrow, the classic session through Hadoop:
    # the same listings (Hadoop's hidden .crc files left out), so the same input fingerprints
    # and one run's manifests are up to date for the other.
    from recsys_spark.stages.manifest import fingerprint

    out = str(tmp_path / "t")
    spark.range(20).repartition(3).write.parquet(out)
    hadoop, arrow = fs._Hadoop(spark), fs._Arrow()
    assert sorted(arrow.walk(out)) == sorted(hadoop.walk(out))
    assert len(hadoop.walk(out)) == 4 and any(p.name.endswith(".crc") for p in tmp_path.joinpath("t").iterdir())
    assert sorted(arrow.children(str(tmp_path))) == sorted(hadoop.children(str(tmp_path)))
    assert arrow.exists(out) and not arrow.exists(f"{out}/none") and arrow.walk(f"{out}/none") == []
    arrow.write_bytes(f"{tmp_path}/a/b/c.json", b"{}")
    assert hadoop.read_bytes(f"{tmp_path}/a/b/c.json") == b"{}" and arrow.read_bytes(f"{tmp_path}/a/b/c.json") == b"{}"
    assert arrow.rename(f"{tmp_path}/a", f"{tmp_path}/x/y") and hadoop.exists(f"{tmp_path}/x/y/b/c.json")
    arrow.delete(f"{tmp_path}/x")
    assert not (tmp_path / "x").exists()
    want = fingerprint(spark, out)
    with unittest.mock.patch.object(fs, "backend", lambda spark: arrow):
        assert fingerprint(spark, out) == want


def test_the_fault_switch_fails_each_write_once(spark, cfg_factory, tmp_path, monkeypatch):
    # the test session is local[2]: Spark does not retry a task there, so the injected failure ends
    # the stage; the second try finds the marker and writes (the retrying masters: tests/integration)
    markers = tmp_path / "faults"
    monkeypatch.setenv(faults.ENV, str(markers))
    cfg = cfg_factory()
    out = cfg.stage_path("y")

    def body(tmp):
        spark.range(5).write.parquet(f"{tmp}/t")
        spark.range(3).write.parquet(f"{tmp}/u")
        return {"n": 8}

    with pytest.raises(Exception, match="injected task failure"):
        run_stage(spark, cfg, "y:model", out, ("split",), [], body)
    assert faults.injected(markers) == ["y_model-001"] and not Path(out).exists()
    with pytest.raises(Exception, match="injected task failure"):
        run_stage(spark, cfg, "y:model", out, ("split",), [], body)  # the first table passes, the second fails
    assert faults.injected(markers) == ["y_model-001", "y_model-002"]
    assert run_stage(spark, cfg, "y:model", out, ("split",), [], body)["counts"] == {"n": 8}
    assert spark.read.parquet(f"{out}/t").count() == 5 and spark.read.parquet(f"{out}/u").count() == 3
    assert sorted(p.name for p in Path(out).parent.iterdir()) == ["y"]  # no temporary folder left
    monkeypatch.delenv(faults.ENV)
    spark.range(2).write.mode("overwrite").parquet(str(tmp_path / "plain"))  # switched off: writes untouched
    assert faults.injected(markers) == ["y_model-001", "y_model-002"]


def test_the_fault_switch_fails_each_pandas_function_once_before_the_write(spark, cfg_factory, tmp_path, monkeypatch):
    # a fit's work in the executors (mapInPandas) fails its first task once; one partition, so the
    # pandas function fails before the same task reaches the write's injected failure
    markers = tmp_path / "faults"
    monkeypatch.setenv(faults.ENV, str(markers))
    cfg = cfg_factory()
    out = cfg.stage_path("z")

    def double(batches):
        for pdf in batches:
            yield pdf.assign(id=pdf["id"] * 2)

    def body(tmp):
        spark.range(4, numPartitions=1).mapInPandas(double, "id long").write.parquet(f"{tmp}/t")
        return {"n": 4}

    with pytest.raises(Exception, match="injected task failure"):
        run_stage(spark, cfg, "z:model", out, ("split",), [], body)
    assert faults.injected(markers) == ["z_model-map-001"]
    with pytest.raises(Exception, match="injected task failure"):
        run_stage(spark, cfg, "z:model", out, ("split",), [], body)  # the function passes, the write fails
    assert faults.injected(markers) == ["z_model-001", "z_model-map-001"]
    assert run_stage(spark, cfg, "z:model", out, ("split",), [], body)["counts"] == {"n": 4}
    assert sorted(r.id for r in spark.read.parquet(f"{out}/t").collect()) == [0, 2, 4, 6]
    monkeypatch.delenv(faults.ENV)
    assert spark.range(2).mapInPandas(double, "id long").count() == 2  # switched off: untouched
    assert faults.injected(markers) == ["z_model-001", "z_model-map-001"]


def test_a_failed_grouped_function_keeps_its_key_argument(tmp_path):
    # Spark's worker passes (key, pdf) or (pdf) by the function's argument count: the wrapper keeps it
    import inspect

    for func, args in ((lambda key, pdf: (key, pdf), ("k", "p")), (lambda pdf: pdf, ("p",))):
        marker = tmp_path / f"m{len(args)}"
        body = faults._fail_first_call(func, str(marker))
        assert len(inspect.getfullargspec(body).args) == len(args)
        with pytest.raises(RuntimeError, match="injected task failure"):
            body(*args)
        assert marker.exists() and body(*args) == func(*args)


def test_lineage_cuts_follow_the_checkpoint_setting(spark, tmp_path):
    from recsys_spark import lineage

    before = spark.sparkContext.getCheckpointDir()
    spark.sparkContext.setCheckpointDir(str(tmp_path / "ckpt"))
    df = spark.range(6).selectExpr("id", "id * 2 as twice")
    try:
        spark.conf.set(lineage.KEY, "reliable")
        cut = lineage.cut(df)
        assert sorted(r.twice for r in cut.collect()) == [0, 2, 4, 6, 8, 10]
        assert any(p.is_file() for p in (tmp_path / "ckpt").rglob("*")), "a reliable cut writes to the checkpoint folder"
        rdd = spark.sparkContext.parallelize(range(4)).map(lambda x: x + 1)
        lineage.cut_rdd(rdd, spark)
        assert rdd.sum() == 10 and rdd.isCheckpointed()
        spark.conf.set(lineage.KEY, "local")
        assert lineage.cut(df).count() == 6 and lineage.mode(spark) == "local"
        spark.conf.set(lineage.KEY, "sometimes")
        with pytest.raises(ValueError, match="must be one of"):
            lineage.cut(df)
    finally:
        spark.conf.set(lineage.KEY, "local")
        spark.sparkContext.setCheckpointDir(before)


def test_json_results_compare_without_the_run_folder_and_its_temporary_files():
    import tempfile

    from recsys_spark.checksum import _stable_json

    tmp = tempfile.gettempdir()
    a = _stable_json({"state": f"{tmp}/recsys-cdae-aaaa/best.pt", "from": "/runs/a/x", "seconds": 3.0, "n": 1.0000000001}, 6, "/runs/a")
    b = _stable_json({"state": f"{tmp}/recsys-cdae-bbbb/best.pt", "from": "/runs/b/x", "seconds": 4.0, "n": 1.0}, 6, "/runs/b")
    assert a == b == {"from": "<root>/x", "n": 1.0, "state": "<tmp>/best.pt"}
