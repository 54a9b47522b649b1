"""Notebooks run as plain scripts on small generated data."""

import pytest

from tests.notebooks import constant_rmse, run_notebook

pytestmark = pytest.mark.slow

# Small generated data; the notebooks set the session's shuffle partitions from their config
# (local.toml: 4), so they are held at the test session's 1 (tests/conftest.py), which the tests
# after them in the process also run with: on data this small every extra task is latency
# (week 4 + week 5 run alone: 79 s with 4, 64 s with 2).
SMALL = "spark.shuffle_partitions=1;generate.n_users=60;generate.n_items=80;generate.n_ratings=2400;generate.min_ratings_per_user=8"


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """One output folder for every notebook, as a user running them in turn has: the first one
    generates, ingests and splits the data, the others find those stages up to date (their
    manifests) and go straight to their own work (about 8 s of a warm session per notebook)."""
    return tmp_path_factory.mktemp("notebooks")


def test_week4_baselines(spark, out):
    ns = run_notebook(
        "week4_baselines", dataset="generated", output=str(out), models="popularity,bias", k="5",
        overrides=SMALL,
    )  # fmt: skip
    rows = ns["rows"]
    assert set(rows) == {"popularity", "bias"}
    assert rows["bias"]["rmse"] < constant_rmse(ns["train"], ns["test"])
    assert 0 < rows["popularity"]["ndcg@5"] <= 1
    assert (out / "week4_generated_data.png").stat().st_size > 1000


def test_week5_collaborative_filtering(spark, out):
    ns = run_notebook(
        "week5_collaborative_filtering", dataset="generated", output=str(out), models="popularity,item_knn,user_knn",
        k="5", cap="30",
        overrides=SMALL,
    )  # fmt: skip
    rows = ns["rows"]
    assert set(rows) == {"popularity", "item_knn", "user_knn"}
    constant = constant_rmse(ns["train"], ns["test"])
    assert rows["item_knn"]["rmse"] < constant and rows["user_knn"]["rmse"] < constant
    # the kernels agree and the cap only ever lowers the pair count
    assert ns["agree"]["only_one"] == 0 and ns["agree"]["max_abs_diff"] < 1e-9
    for full, capped in ns["pairs"].values():
        assert 0 < capped <= full
    assert all(0.0 <= r <= 1.0 for r in ns["recall"].values())
    assert ns["explain"].count() > 0
    assert (out / "week5_generated_similarities.png").stat().st_size > 1000


def test_week6_matrix_factorization(spark, out):
    ns = run_notebook(
        "week6_matrix_factorization", dataset="generated", output=str(out),
        models="bias,nmf,svdpp,svdpp_time", k="5", epochs="3", rank="4",
        params="nmf:max_iter=3;svdpp:n_epochs=3;svdpp_time:n_epochs=3;svdpp_time:rank=5",
        overrides=SMALL,
    )  # fmt: skip
    rows = ns["rows"]
    assert set(rows) == {"bias", "nmf", "svdpp", "svdpp_time"}
    constant = constant_rmse(ns["train"], ns["test"])
    assert all(r["rmse"] < constant and 0 < r["ndcg@5"] <= 1 for r in rows.values()), (constant, rows)
    assert ns["models"]["svdpp_time"].rank == 5 and len(ns["models"]["svdpp"].info["history"]) == 0
    assert ns["time_gain"] == pytest.approx(rows["svdpp_time"]["rmse"] - rows["svdpp"]["rmse"])
    curves = ns["curves"]
    assert set(curves) == {"sgd", "gd", "als"} and len(curves["als"]) == 3 and len(curves["gd"]) == 4
    assert ns["interp"].where("kind = 'genre'").count() > 0
    assert (out / "week6_generated_convergence.png").stat().st_size > 1000
    assert (out / "week6_generated_nmf_factors.png").stat().st_size > 1000


def test_week7_content_based(spark, out):
    ns = run_notebook(
        "week7_content_based", dataset="generated", output=str(out), k="5",
        models="bias,content", cold_models="content,bias", genres="Drama", ablate="tags",
        overrides=SMALL,
    )  # fmt: skip
    rows = ns["rows"]
    assert set(rows) == {"bias", "content"}
    constant = constant_rmse(ns["train"], ns["test"])
    assert all(r["rmse"] < constant and 0 < r["ndcg@5"] <= 1 for r in rows.values()), (constant, rows)
    assert ns["profile_check"]["index_mismatch"] == 0
    assert set(ns["ablation"]) == {"(all)", "tags"}
    assert set(ns["cold"]["experiments"]) == {"items", "users"}
    assert ns["cold"]["experiments"]["users"]["paired"]["content - bias"]["ndcg@5"]["users"] > 0
    assert ns["fallback"].count() > 0 and ns["explained"].where("reason is null").count() == 0
    for png in ("neighbour_overlap", "ablation", "coldstart"):
        assert (out / f"week7_generated_{png}.png").stat().st_size > 1000


@pytest.mark.slow
def test_week8_deep_learning_ncf(spark, out):
    pytest.importorskip("torch")
    ns = run_notebook(
        "week8_deep_learning_ncf", dataset="generated", output=str(out), k="5", epochs="2", valid_fraction="0",
        models="popularity,gmf,cdae", rating_models="autorec", lastout_models="gmf", negatives="20",
        overrides=SMALL,
    )  # fmt: skip
    assert set(ns["rows"]) == {"popularity", "gmf", "cdae"}
    assert all(0 < r["ndcg@5"] <= 1 for r in ns["rows"].values()), ns["rows"]
    assert ns["rating_rows"]["autorec"]["rmse"] < 2.0  # two epochs of training: not yet better than a constant
    lc = ns["loader_check"]
    assert lc["overlap"] == 0 and lc["rank0"] + lc["rank1"] == lc["rows"] == ns["export"]["counts"]["interactions_train"]
    assert ns["score_check"]["max_abs_diff"] < 1e-4
    assert set(ns["recon"]) == {"autorec", "cdae"} and 0 <= ns["recon"]["cdae"]["train_recall_at_n"] <= 1
    lo = ns["lastout"]["gmf"]
    assert 0 <= lo["hr@10"] <= 1 and lo["users"] > 0 and lo["users"] + lo["users_skipped"] == 60
    assert len(ns["neighbours"]) == 4
    for png in ("training_curves", "item_embeddings"):
        assert (out / f"week8_generated_{png}.png").stat().st_size > 1000


def test_week10_hybrid_models(spark, out):
    from recsys_spark.blend import RATING_METHODS

    ns = run_notebook(
        "week10_hybrid_models", dataset="generated", output=str(out), k="5", models="popularity,bias,item_knn",
        valid_ratio="0.2", overrides=SMALL + ";tracking.enabled=false",
    )  # fmt: skip
    blend = ns["blend"]
    assert blend["ratings"]["fit_rows"] > 0 and not blend["ratings"].get("untrained")  # it learned on the validation part
    assert set(RATING_METHODS) | {"single:bias", "single:item_knn", "single:popularity"} <= set(ns["cv"])
    assert len(ns["seg"].seg_weights) >= 2 and len(ns["switch"].chains) == 4
    assert ns["routes"].where("source not like 'switch:%'").count() == 0
    assert set(ns["table"]) == {"popularity", "bias", "item_knn", "blend"}
    final = ns["final"]
    assert final["fit"] == "production" and final["users_written"] == final["users"] == 60
    assert ns["recs"].where("explanation is null or size(contributors) = 0").count() == 0
    for png in ("rating_methods", "segment_weights", "topn_methods"):
        assert (out / f"week10_generated_{png}.png").stat().st_size > 1000


def test_week9_advanced_deep_learning(spark, out):
    pytest.importorskip("torch")
    ns = run_notebook(
        "week9_advanced_deep_learning", dataset="generated", output=str(out), k="5", epochs="2",
        rating_models="fm_explicit,deepfm_explicit", ranking_models="popularity,deepfm", sequence_models="last_item,sasrec",
        session_gap="300000000",  # generated ratings lie months apart: a session of years
        overrides=SMALL,
    )  # fmt: skip
    assert set(ns["rating_rows"]) == {"fm_explicit", "deepfm_explicit"}
    assert all(r["rmse"] < 2.0 for r in ns["rating_rows"].values())
    assert 0 <= ns["ctr"]["deepfm"]["auc"] <= 1 and ns["ctr"]["deepfm"]["positives"] > 0
    fields = ns["interactions"]["fields"]
    assert {"user", "item", "gender", "age", "occupation", "genres", "tags", "weekday", "hour", "tenure"} <= set(fields)
    assert set(ns["next_rows"]) == {"last_item", "sasrec"} and all(0 <= r["ndcg@5"] <= r["hr@5"] <= 1 for r in ns["next_rows"].values())
    because = ns["explained"].collect()
    assert because and all(r["because"] for r in because)  # attention names past items for every recommendation
    assert ns["session_lists"].count() > 0
    for rows in ns["temporal"]["by"].values():
        assert sum(r["users"] for r in rows) == len(ns["per_user"]["sasrec"])
    for png in ("interactions", "temporal"):
        assert (out / f"week9_generated_{png}.png").stat().st_size > 1000
