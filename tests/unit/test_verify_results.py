"""benchmarks/verify_results.py: which figures it compares, and that a changed figure is caught."""

import importlib.util

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("verify_results", ROOT / "benchmarks" / "verify_results.py")
vr = importlib.util.module_from_spec(spec)
spec.loader.exec_module(vr)

STORED = {
    "models": {
        "bias": {
            "rmse": 0.9458, "fit_s": 13.1, "rows": 100000,
            "folds": [{"fold": "u1", "rmse": 0.96, "fit_s": 16.6}, {"fold": "u2", "rmse": 0.9477, "fit_s": 12.9}],
        },
    },
}  # fmt: skip


def test_figures_skip_timings_and_key_folds_by_name():
    assert vr.figures(STORED) == {
        "models/bias/rmse": 0.9458, "models/bias/rows": 100000.0,
        "models/bias/folds/u1/rmse": 0.96, "models/bias/folds/u2/rmse": 0.9477,
    }  # fmt: skip


def test_compare_catches_a_changed_figure_and_ignores_timings():
    same = {"models": {"bias": {**STORED["models"]["bias"], "fit_s": 99.0}}}
    assert vr.compare(STORED, same, 1e-4, folds_only=False) == ([], 4)
    moved = {"models": {"bias": {"rmse": 0.9470, "rows": 100000, "folds": [{"fold": "u1", "rmse": 0.96}]}}}
    assert vr.compare(STORED, moved, 1e-4, folds_only=False) == (["models/bias/rmse: stored 0.9458, rerun 0.947"], 3)
    # one fold rerun: its mean is that fold's, so only the per-fold figures are compared
    one_fold = {"models": {"bias": {"rmse": 0.96, "rows": 20000, "folds": [{"fold": "u1", "rmse": 0.9601}]}}}
    assert vr.compare(STORED, one_fold, 1e-3, folds_only=True) == ([], 1)
    assert vr.compare(STORED, one_fold, 1e-6, folds_only=True) == (["models/bias/folds/u1/rmse: stored 0.96, rerun 0.9601"], 1)


def test_every_current_file_exists_and_records_its_protocol():
    import json

    for name in vr.CURRENT:
        data = json.loads((vr.RESULTS / f"{name}.json").read_text())
        assert data["protocol"]["name"] == name.split("/")[0] and data["protocol"]["dataset"] == name.split("/")[1]
