"""The dashboard: the page from a hand-made report, and the evaluate stage's page in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from recsys_spark import report

K = 10


def _payload() -> dict:
    common = {"rows": 100, "users": 20, "diversity_basis": "co-occurrence"}
    models = {
        "pop": {"rmse": 1.0, "ndcg@10": 0.20, "coverage": 0.05, **common},
        "knn": {"rmse": 0.9, "ndcg@10": 0.30, "coverage": 0.40, **common},
        "blend": {"rmse": 0.88, "ndcg@10": 0.31, "coverage": 0.30, **common},
    }
    row = {"reference": "blend", "model": "pop", "diff": 0.11, "ci95_lo": 0.05, "ci95_hi": 0.17,
           "t_p_holm": 0.001, "wilcoxon_p_holm": 0.002}  # fmt: skip
    return {
        "dataset": "toy", "split": "stratified-x", "k": K, "blend": {"chosen": "rrf(pop, knn)"},
        "best_single": {"metric": "ndcg@10", "model": "knn"}, "models": models,
        "intervals": {m: {"ndcg@10": [v["ndcg@10"], v["ndcg@10"] - 0.05, v["ndcg@10"] + 0.05],
                          "rmse": [v["rmse"], v["rmse"] - 0.02, v["rmse"] + 0.02]} for m, v in models.items()},  # fmt: skip
        "significance": {"ndcg@10": {"rows": [row]}},
        "selection": {"metric": "ndcg@10", "selected": "knn", "pareto_front": ["pop", "knn"], "rationale": "knn is selected <because>",
                      "costs_s": {"pop": 1.0, "knn": 5.0, "blend": 7.0}},
    }  # fmt: skip


def _segments() -> list[dict]:
    rows = []
    for order, seg in enumerate(["1-5", "6-20"]):
        for m, v in (("pop", 0.1), ("knn", 0.2), ("blend", 0.25)):
            rows.append({"kind": "user activity", "segment": seg, "segment_order": order, "model": m, "ndcg@10": v + order / 10,
                         "rmse": 1.0, "users": 10, "rows": 50})  # fmt: skip
            rows.append({"kind": "item popularity", "segment": seg, "segment_order": order, "model": m, "ndcg@10": None,
                         "rmse": 1.0 - v, "users": None, "rows": 50})  # fmt: skip
    return rows


def test_the_page_has_every_section_its_figures_and_escapes_text():
    rng = np.random.default_rng(0)
    curves = {"cdae": [{"epoch": e, "train_loss": 1 / (e + 1), "valid_ndcg@10": 0.1 * e} for e in range(4)]}
    projection = ("als", rng.normal(size=(30, 4)), rng.random(30))
    page = report.dashboard(_payload(), _segments(), _payload()["selection"]["costs_s"], curves, projection)
    for sid in report.SECTIONS:
        assert f"<section id='{sid}'>" in page, sid
    assert page.count("<svg") == 6  # intervals, two heat-maps, cost, curves, projection
    assert "knn is selected &lt;because&gt;" in page  # text is escaped
    assert "<script" not in page and not re.search(r"(src|href)=[\"']?(https?:|//)", page)  # self-contained: nothing fetched
    bare = report.dashboard({**_payload(), "intervals": {}}, [], None, None, None)
    assert all(f"<section id='{sid}'>" in bare for sid in report.SECTIONS) and "No factorize stage" in bare
    assert "No serving measurement" in bare


SERVED = {
    "model_uri": "models:/toy@champion", "http": {
        "known_ms": {"n": 90, "p50": 2.15, "p90": 2.74, "p99": 3.58, "max": 5.14},
        "unknown_ms": {"n": 10, "p50": 2.11, "p90": 2.63, "p99": 3.5, "max": 3.51}, "wrong_answers": 0, "server": "mlflow models serve"},
    "batch_udf": {"users": 512, "wall_s": 2.88, "users_per_s": 178.1, "lists_equal_to_final": 512, "final_users": 512,
                  "master": "local[2]"},
}  # fmt: skip


def test_the_serving_section_shows_the_measured_latency_and_batch_throughput():
    page = report.dashboard(_payload(), _segments(), None, None, None, SERVED)
    section = page[page.index("<section id='serving'>"):]
    section = section[: section.index("</section>")]
    cells = re.findall(r"<td>([^<]*)</td>", section)
    assert cells == ["known user", "90", "2.15", "2.74", "3.58", "5.14", "unknown user (cold start)", "10", "2.11", "2.63", "3.5", "3.51"]
    assert "512 users in 2.88 s (178.1 users/s); 512 of 512 lists equal" in section and "models:/toy@champion" in section


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def test_the_evaluate_stage_dashboard_renders_in_headless_chromium(spark, shop_pipeline, tmp_path):
    import argparse
    import logging

    from matplotlib import image

    from recsys_spark import cli
    from recsys_spark.stages import layout

    cfg, _, _ = shop_pipeline
    written = Path(layout.evaluate(cfg), "dashboard.html")
    assert written.stat().st_size > 10_000
    page = tmp_path / "rebuilt.html"  # recsys-spark report --out: the same page from the stage's outputs
    assert cli._report(spark, cfg, argparse.Namespace(out=str(page)), logging.getLogger("test")) == 0
    assert page.read_text() == written.read_text()
    served = Path(layout.evaluate(cfg), "serving.json")  # what benchmarks/serving.py leaves beside results.json
    served.write_text(json.dumps(SERVED))
    try:
        with_serving = tmp_path / "served.html"
        assert cli._report(spark, cfg, argparse.Namespace(out=str(with_serving)), logging.getLogger("test")) == 0
        assert "<td>3.58</td>" in with_serving.read_text()
    finally:
        served.unlink()
    browser = _chromium()
    if browser is None:
        msg = "Chromium not found (make install installs Debian's chromium package where it can)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    flags = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
             "--enable-logging=stderr", "--v=0"]  # fmt: skip
    shot = tmp_path / "dashboard.png"
    cmd = [*flags, f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri()]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.exists(), run.stderr[-2000:]
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line and re.search(r"error|uncaught", line, re.I)]
    assert console == []
    pixels = image.imread(str(shot))[..., :3]
    assert pixels.std() > 0.05 and (pixels.mean(axis=2) < 0.9).mean() > 0.02  # not blank: text and figures drawn
    dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    for sid in report.SECTIONS:
        assert f'id="{sid}"' in dom, sid
    assert dom.count("<svg") >= 3
