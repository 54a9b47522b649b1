"""``recsys-spark report --suite``: the tables from finished cells checked by hand, and a small run end to end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from recsys_spark import suite


def _cell(out, dataset, protocol, model, result, values):
    d = suite.cell_dir(str(out), dataset, protocol, model)
    d.mkdir(parents=True)
    (d / "result.json").write_text(json.dumps(result))
    values.to_parquet(d / "values.parquet", index=False)


def _topn(out, model, ndcg_by_user, protocol="topn"):
    users = list(ndcg_by_user)
    frame = pd.DataFrame({"user_idx": users, "ndcg@10": list(ndcg_by_user.values())})
    res = {"protocol": {"name": protocol}, "models": {model: {"ndcg@10": float(np.mean(frame["ndcg@10"])), "coverage": 0.5,
                                                              "fit_s": 1.0, "predict_s": 1.0}}}  # fmt: skip
    _cell(out, "d", protocol, model, res, frame)


def test_topn_table_by_hand_with_holm_over_the_comparisons(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.random(40)
    _topn(tmp_path, "popularity", dict(enumerate(a)))
    _topn(tmp_path, "bias", dict(enumerate(a - 0.1)))
    _topn(tmp_path, "ease", {u: v for u, v in enumerate(a + 0.2) if u != 3})  # user 3 got no list: scores 0
    payload = suite.build_report(str(tmp_path), ["d"], ["topn"], ["popularity", "bias", "ease", "item_knn"], 10, {})
    (t,) = payload["tables"]
    assert t["best"] == "ease" and t["n"] == 40
    ease = a + 0.2
    ease[3] = 0.0
    v, lo, hi = t["intervals"]["ease"]
    assert v == pytest.approx(ease.mean()) and lo < v < hi
    rows = {r["model"]: r for r in t["comparisons"] if r["reference"] == "ease"}
    raw = {m: stats.ttest_rel(ease, other).pvalue for m, other in (("popularity", a), ("bias", a - 0.1))}
    assert rows["popularity"]["diff"] == pytest.approx(ease.mean() - a.mean())
    assert rows["popularity"]["t_p"] == pytest.approx(raw["popularity"])
    ps = sorted([r["t_p"] for r in t["comparisons"]])  # Holm by hand: m p(1), then max with (m-1) p(2), ...
    m = len(ps)
    holm = np.minimum(1, np.maximum.accumulate([(m - i) * p for i, p in enumerate(ps)]))
    assert sorted(r["t_p_holm"] for r in t["comparisons"]) == pytest.approx(list(holm))
    assert payload["not_run"] == ["d/topn/item_knn"]
    md = suite.markdown(payload)
    assert "## d, topn" in md and "| ease | " in md and "d/topn/item_knn" in md


def test_a_nextitem_table_compares_per_user_values_like_topn(tmp_path):
    a = np.linspace(0, 1, 30)
    _topn(tmp_path, "last_item", dict(enumerate(a)), "nextitem")
    _topn(tmp_path, "popularity", dict(enumerate(a[::-1] * 0.5)), "nextitem")
    (t,) = suite.build_report(str(tmp_path), ["d"], ["nextitem"], ["last_item", "popularity"], 10, {})["tables"]
    assert t["protocol"] == "nextitem" and t["best"] == "last_item" and t["units"] == "users"
    (row,) = [r for r in t["comparisons"] if r["reference"] == "last_item"]
    assert row["t_p"] == pytest.approx(stats.ttest_rel(a, a[::-1] * 0.5).pvalue)


def test_rating_table_pairs_the_same_ratings_and_refuses_others(tmp_path):
    keys = pd.DataFrame({"fold": [1, 1, 1, 2, 2, 2], "user_idx": [0, 0, 1, 1, 2, 2], "item_idx": [5, 6, 5, 7, 5, 6]})
    errs = {"bias": np.array([0.5, -0.5, 1.0, 0.0, 0.5, -1.0]), "svd": np.array([0.1, -0.2, 0.3, 0.0, 0.2, -0.4])}
    for m, e in errs.items():
        res = {"protocol": {"name": "rating"}, "models": {m: {"rmse": float(np.sqrt(np.mean(e**2))), "fit_s": 1.0, "predict_s": 0.1}}}
        _cell(tmp_path, "d", "rating", m, res, keys.assign(err=e))
    stored = suite.cell_dir(str(tmp_path), "d", "rating", "bias")  # a cell that keeps only the digest of its pairs
    res = json.loads((stored / "result.json").read_text())
    (stored / "result.json").write_text(json.dumps({**res, "keys_sha256": suite.keys_digest(keys)}))
    keys.assign(err=errs["bias"]).drop(columns="item_idx").to_parquet(stored / "values.parquet", index=False)
    payload = suite.build_report(str(tmp_path), ["d"], ["rating"], ["bias", "svd", "ease"], 10, {})
    (t,) = payload["tables"]
    assert t["best"] == "svd" and t["units"] == "ratings" and t["n"] == 6
    (row,) = [r for r in t["comparisons"] if r["reference"] == "svd"]
    assert row["diff"] == pytest.approx(np.sqrt(np.mean(errs["bias"] ** 2)) - np.sqrt(np.mean(errs["svd"] ** 2)))
    assert row["t_p"] == pytest.approx(stats.ttest_rel(errs["bias"] ** 2, errs["svd"] ** 2).pvalue)
    assert "d/rating/ease" not in payload["not_run"]  # ease predicts no ratings: not asked for
    other = keys.assign(err=errs["svd"])
    other.loc[0, "item_idx"] = 9
    suite.cell_dir(str(tmp_path), "d", "rating", "svd").joinpath("values.parquet").unlink()
    other.to_parquet(suite.cell_dir(str(tmp_path), "d", "rating", "svd") / "values.parquet", index=False)
    with pytest.raises(ValueError, match="svd's rating cell covers other test ratings"):
        suite.build_report(str(tmp_path), ["d"], ["rating"], ["bias", "svd"], 10, {})


def test_a_small_suite_runs_end_to_end_and_a_rerun_reuses_its_cells(spark, tmp_path, monkeypatch):
    over = [
        f'paths.output="{tmp_path / "out"}"', "generate.n_users=60", "generate.n_items=80", "generate.n_ratings=2400",
        "tracking.enabled=false",
    ]  # fmt: skip
    out = str(tmp_path / "suite")
    payload = suite.run_suite(spark, None, over, ["generated"], ["rating", "topn"], "popularity,bias", out=out)
    assert [(t["protocol"], sorted(t["models"])) for t in payload["tables"]] == [("rating", ["bias", "popularity"]),
                                                                               ("topn", ["bias", "popularity"])]  # fmt: skip
    assert payload["not_run"] == [] and payload["failed"] == {}
    topn = payload["tables"][1]
    for m, row in topn["models"].items():
        assert row["model_mb"] > 0 and row["fit_s"] > 0 and row["peak_jvm_heap_mb"] > 0, m
        v, lo, hi = topn["intervals"][m]
        assert v == pytest.approx(row["ndcg@10"]) and lo <= v <= hi
    rating = payload["tables"][0]
    assert rating["protocol_spec"]["split"] == "stratified" and rating["protocol_spec"]["folds"] == ["s42"]
    cell = suite.cell_dir(out, "generated", "rating", "bias")  # the rated pairs are a digest, not a list
    assert list(pd.read_parquet(cell / "values.parquet").columns) == ["fold", "user_idx", "err"]
    assert len(json.loads((cell / "result.json").read_text())["keys_sha256"]) == 64
    for name in ("suite.json", "suite.md", "suite.html"):
        assert (tmp_path / "suite" / name).stat().st_size > 0
    assert "<svg" in (tmp_path / "suite" / "suite.html").read_text()

    def no_run(*a, **k):
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr(suite, "run_cell", no_run)
    again = suite.run_suite(spark, None, over, ["generated"], ["rating", "topn"], "popularity,bias", out=out)
    assert again["tables"][1]["intervals"] == topn["intervals"]
