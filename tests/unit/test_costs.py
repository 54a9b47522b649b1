"""What a model costs: the meter, the predict stage's cost section and its saved model, the evaluate cost table."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from recsys_spark import costs


def test_the_meter_times_phases_samples_memory_and_stops_its_thread(spark):
    before = {t.name for t in threading.enumerate()}
    with costs.CostMeter(spark, interval_s=0.05) as meter:
        with meter.phase("fit"):
            spark.range(200_000).selectExpr("id % 7 as k").groupBy("k").count().collect()
        with meter.phase("fit"):  # a phase entered twice adds up
            pass
        with meter.phase("recommend"):
            blob = np.ones(20 * 2**20 // 8)  # 20 MB in this process: the driver's peak sees it
    res = meter.result()
    assert res["fit_s"] > 0 and res["recommend_s"] >= 0
    assert res["peak_driver_python_mb"] >= 20 and res["peak_jvm_rss_mb"] > 0 and res["peak_jvm_heap_mb"] > 0
    assert res["memory_samples"] >= 2
    assert "cost-meter" not in {t.name for t in threading.enumerate()} - before
    del blob


def test_throughput_and_dir_bytes_by_hand(spark, tmp_path):
    assert costs.throughput({"predict_s": 2.0, "recommend_s": 0.5}, 1000, 250) == {
        "predict_rows_per_s": 500.0, "recommend_users_per_s": 500.0, "recommend_s_per_1k_users": 2.0,
    }  # fmt: skip
    assert costs.throughput({"fit_s": 1.0}, 10, 10) == {}
    spark.range(1000).write.parquet(str(tmp_path / "t"))
    by_hand = sum(p.stat().st_size for p in (tmp_path / "t").rglob("*") if p.is_file() and not p.name.startswith((".", "_")))
    assert costs.dir_bytes(spark, str(tmp_path / "t")) == by_hand > 0


def test_the_predict_stage_records_costs_and_saves_a_model_that_reloads(spark, shop_pipeline):
    from recsys_spark.recommender import load_model
    from recsys_spark.stages import layout

    cfg, _res, _lines = shop_pipeline
    for name in cfg.models.names:
        root = layout.predictions(cfg, name)
        man = json.loads(Path(root, "_manifest.json").read_text())
        cost = man["counts"]["cost"]
        users = man["counts"]["test"]["users"]
        assert cost["fit_s"] > 0 and cost["predict_s"] > 0 and cost["recommend_s"] > 0
        assert cost["recommend_users_per_s"] == pytest.approx(users / cost["recommend_s"], rel=1e-2)
        assert cost["predict_rows_per_s"] == pytest.approx(man["counts"]["test"]["rows"] / cost["predict_s"], rel=1e-2)
        assert cost["peak_driver_python_mb"] > 0 and cost["peak_jvm_heap_mb"] > 0
        on_disk = sum(os.path.getsize(p) for p in Path(root, "model").rglob("*") if p.is_file() and not p.name.startswith((".", "_")))
        assert cost["model_mb"] == pytest.approx(on_disk / 2**20, abs=1e-3)
        model = load_model(f"{root}/model")  # the refit on train + valid: it reproduces the stage's test lists
        test_users = spark.read.parquet(f"{root}/test/topn").select("user_idx").distinct()
        again = {(r.user_idx, r.rank, r.item_idx) for r in model.recommend(test_users, cfg.models.k).collect()}
        wrote = {(r.user_idx, r.rank, r.item_idx) for r in spark.read.parquet(f"{root}/test/topn").collect()}
        assert again == wrote


def test_the_evaluate_stage_writes_the_cost_table(shop_pipeline):
    from recsys_spark.stages import layout

    cfg, _res, _lines = shop_pipeline
    payload = json.loads(Path(layout.evaluate(cfg), "results.json").read_text())
    for name in cfg.models.names:
        man = json.loads(Path(layout.predictions(cfg, name), "_manifest.json").read_text())
        assert payload["costs"][name]["stage_s"] == man["wall_s"]
        assert payload["costs"][name]["model_mb"] == man["counts"]["cost"]["model_mb"]
    blend = payload["costs"]["blend"]
    members = blend["members"]
    assert blend["model_mb"] == pytest.approx(sum(payload["costs"][m]["model_mb"] for m in members), abs=1e-3)
    assert blend["peak_jvm_heap_mb"] == max(payload["costs"][m]["peak_jvm_heap_mb"] for m in members)
    assert payload["selection"]["latency_s_per_1k_users"]["blend"] == blend["recommend_s_per_1k_users"]
    md = Path(layout.evaluate(cfg), "results.md").read_text()
    assert "## Cost" in md and "s per 1K users" in md
