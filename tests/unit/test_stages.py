"""Stage runner: manifests, skipping, atomic outputs; the pipeline on tiny generated data."""

import json
from pathlib import Path

import pytest

from recsys_spark import stages
from recsys_spark.ingest import IngestError
from recsys_spark.pipeline import run_pipeline
from tests.conftest import write

SMALL = (
    "generate.n_users=60", "generate.n_items=80", "generate.n_ratings=1500",
    "generate.min_ratings_per_user=5", "generate.rank=3",
)  # fmt: skip


def test_failed_stage_leaves_no_output(spark, cfg_factory):
    cfg = cfg_factory()
    out = cfg.stage_path("x")

    def body(tmp):
        spark.range(3).write.parquet(f"{tmp}/t")
        raise RuntimeError("killed half way")

    with pytest.raises(RuntimeError):
        stages.run_stage(spark, cfg, "x", out, ("split",), [], body)
    parent = Path(out).parent
    assert not Path(out).exists()
    assert not any(p.name.startswith("x.tmp") for p in parent.iterdir()) if parent.exists() else True


def test_stage_skips_when_up_to_date_and_reruns_on_change(spark, cfg_factory, tmp_path):
    src = write(tmp_path / "in.txt", "a\n")
    calls = []

    def body(tmp):
        calls.append(1)
        spark.range(2).write.parquet(f"{tmp}/t")
        return {"n": 2}

    cfg = cfg_factory()
    out = cfg.stage_path("y")
    first = stages.run_stage(spark, cfg, "y", out, ("split",), [src], body)
    second = stages.run_stage(spark, cfg, "y", out, ("split",), [src], body)
    assert (first["skipped"], second["skipped"], len(calls)) == (False, True, 1)
    manifest = json.loads((Path(out) / "_manifest.json").read_text())
    assert manifest["counts"] == {"n": 2} and manifest["config"]["split"]["seed"] == 42
    stages.run_stage(spark, cfg_factory("split.seed=7"), "y", out, ("split",), [src], body)
    assert len(calls) == 2
    write(tmp_path / "in.txt", "changed input\n")
    stages.run_stage(spark, cfg_factory("split.seed=7"), "y", out, ("split",), [src], body)
    assert len(calls) == 3


def test_pipeline_reruns_only_affected_stages(spark, cfg_factory):
    # publish (the MLflow registry) has its own tests (test_serving.py): left out of these reruns
    small = (*SMALL, "publish.enabled=false")
    models = 'models.names=["popularity", "item_mean"]'
    cfg = cfg_factory(*small, models)
    first = run_pipeline(spark, cfg)
    names = ["generate", "ingest", "split", "predict:popularity", "predict:item_mean", "blend", "final", "evaluate"]
    assert list(first) == names
    assert not any(m["skipped"] for m in first.values())
    split_dir = stages.split_name(cfg)
    train = spark.read.parquet(cfg.stage_path("splits", split_dir, "train")).collect()
    results = json.loads(Path(cfg.stage_path("evaluate", "results.json")).read_text())
    assert set(results["models"]) == {"popularity", "item_mean", "blend"}
    # paired tests of the best model and of the blend against the others, Holm-adjusted; the segment table
    for metric, sig in results["significance"].items():
        pairs = {(r["reference"], r["model"]) for r in sig["rows"]}
        assert sig["references"][-1] == "blend" and len(pairs) == len(sig["rows"]) >= 2, metric
        assert all(r["t_p"] <= r["t_p_holm"] <= 1 and r["ci95_lo"] <= r["diff"] <= r["ci95_hi"] for r in sig["rows"]), metric
    assert results["significance"]["rmse"]["n"] == spark.read.parquet(cfg.stage_path("splits", split_dir, "test")).count()
    segments = spark.read.parquet(cfg.stage_path("evaluate", "segments"))
    kinds = {r["kind"] for r in segments.select("kind").distinct().collect()}
    assert {"user activity", "user rating variance", "item popularity", "user gender"} <= kinds
    assert "## Paired comparisons, ndcg@10" in Path(cfg.stage_path("evaluate", "results.md")).read_text()
    choice = results["selection"]
    assert choice["selected"] in {"popularity", "item_mean", "blend"}
    assert choice["rationale"].startswith(f"{choice['selected']} is selected")
    assert set(choice["costs_s"]) == {"popularity", "item_mean", "blend"} and choice["costs_s"]["blend"] >= choice["costs_s"]["popularity"]
    assert first["evaluate"]["counts"]["mlflow_run_id"]
    per_user = spark.read.parquet(cfg.stage_path("evaluate", "per_user"))
    assert {r["model"] for r in per_user.select("model").distinct().collect()} == {"popularity", "item_mean", "blend"}
    n_test_users = spark.read.parquet(cfg.stage_path("splits", split_dir, "test")).select("user_idx").distinct().count()
    assert per_user.where("model = 'blend'").count() == n_test_users
    # no validation part here (split.valid_ratio = 0): the blend says it is untrained, and its
    # ratings are the plain mean of the members' test predictions
    assert first["blend"]["counts"]["ratings"]["untrained"] and first["blend"]["counts"]["topn"]["untrained"]
    blend = spark.read.parquet(cfg.stage_path("blend", "test", "ratings")).select("user_idx", "item_idx", "prediction")
    for name in ("popularity", "item_mean"):
        other = spark.read.parquet(cfg.stage_path("predictions", name, "test", "ratings"))
        blend = blend.join(other.selectExpr("user_idx", "item_idx", f"prediction as {name}"), ["user_idx", "item_idx"])
    rows = blend.collect()
    assert len(rows) == spark.read.parquet(cfg.stage_path("splits", split_dir, "test")).count()
    assert all(abs(r.prediction - min(5.0, max(0.5, (r.popularity + r.item_mean) / 2))) < 1e-9 for r in rows)

    second = run_pipeline(spark, cfg)
    assert all(m["skipped"] for m in second.values())
    assert sorted(spark.read.parquet(cfg.stage_path("splits", split_dir, "train")).collect()) == sorted(train)
    assert json.loads(Path(cfg.stage_path("evaluate", "results.json")).read_text()) == results

    def ran(res):
        return [k for k, m in res.items() if not m["skipped"]]

    # a model added and a blend setting changed: the new model's predict, then what reads the predictions
    added = 'models.names=["popularity", "item_mean", "global_mean"]'
    assert ran(run_pipeline(spark, cfg_factory(*small, added, "blend.folds=3"))) == [
        "predict:global_mean", "blend", "final", "evaluate",
    ]  # fmt: skip
    reseeded = run_pipeline(spark, cfg_factory(*small, models, "split.seed=7"))
    assert ran(reseeded) == names[2:]
    counts = reseeded["ingest"]["counts"]["tables"]["ratings"]
    assert counts["read"] == counts["kept"] + counts["quarantined"] + counts["deduplicated"]


def test_ingest_refuses_too_many_bad_rows_and_keeps_them_for_inspection(spark, cfg_factory, tmp_path):
    root = tmp_path / "ml"
    write(root / "ratings.csv", "userId,movieId,rating,timestamp\n1,1,4,5\n1,2,9,5\n2,1,x,5\n")
    write(root / "movies.csv", "movieId,title,genres\n1,A (1990),Drama\n2,B (1991),Drama\n")
    write(root / "tags.csv", "userId,movieId,tag,timestamp\n1,1,fun,5\n")
    cfg = cfg_factory("dataset.kind=ml-latest", f'dataset.path="{root}"', "dataset.name=bad")
    with pytest.raises(IngestError, match=r"ratings: 2 of 3 rows .* quarantined"):
        stages.run_ingest(spark, cfg)
    assert not Path(cfg.stage_path("ingest")).exists()
    rejected = spark.read.parquet(cfg.stage_path("ingest") + ".rejected/quarantine")
    assert sorted(r["line_no"] for r in rejected.collect()) == [3, 4]


def test_neighbors_stage_writes_the_table_and_accounts_for_its_rows(spark, cfg_factory):
    cfg = cfg_factory(*SMALL, "neighbors.max_neighbors=5")
    for stage in ("generate", "ingest", "split"):
        stages.STAGES[stage](spark, cfg)
    first = stages.run_neighbors(spark, cfg)
    c = first["counts"]
    table = spark.read.parquet(cfg.stage_path("neighbors", "item_knn", "table"))
    assert table.columns == ["a", "b", "sim", "support"]
    assert c["pairs"] == table.count() > 0 and c["direction"] == "item-item"
    assert table.groupBy("a").count().agg({"count": "max"}).first()[0] <= 5
    train = stages.read_split(spark, cfg, "train").unionByName(stages.read_split(spark, cfg, "valid"))
    assert c["ratings"] == c["ratings_paired"] == train.count()  # no cap configured
    assert c["entities"] == train.select("item_idx").distinct().count() >= c["entities_with_neighbors"]
    assert stages.run_neighbors(spark, cfg)["skipped"]
    with pytest.raises(ValueError, match="not a neighbourhood model"):
        stages.run_neighbors(spark, cfg_factory(*SMALL, 'neighbors.model="bias"'))


def test_factorize_stage_writes_factors_and_their_meaning(spark, cfg_factory, tmp_path):
    models = tmp_path / "models"
    write(models / "nmf_mu.toml", "[params]\nrank = 3\nn_epochs = 5\n")
    cfg = cfg_factory(*SMALL, f'models.models_dir="{models}"', 'factorize.model="nmf_mu"', "factorize.top_terms=3")
    for stage in ("generate", "ingest", "split"):
        stages.STAGES[stage](spark, cfg)
    res = stages.run_factorize(spark, cfg)
    c = res["counts"]
    assert c["rank"] == 3 and c["users_with_factors"] == c["users"] and c["items_with_factors"] == c["items"]
    train = stages.read_split(spark, cfg, "train").unionByName(stages.read_split(spark, cfg, "valid"))
    assert c["ratings"] == train.count()
    out = Path(cfg.stage_path("factors", "nmf_mu"))
    items = spark.read.parquet(str(out / "item_factors"))
    assert items.count() == c["items"] and len(items.first()["factors"]) == 3
    interp = spark.read.parquet(str(out / "interpretation"))
    assert {r["kind"] for r in interp.collect()} >= {"title", "genre"}
    assert interp.groupBy("factor", "kind").count().agg({"count": "max"}).first()[0] <= 3
    assert (out / "interpretation.png").stat().st_size > 1000
    assert stages.run_factorize(spark, cfg)["skipped"]
    with pytest.raises(ValueError, match="not a factorization model"):
        stages.run_factorize(spark, cfg, "bias")


def test_content_stage_writes_features_profiles_and_explanations(spark, cfg_factory):
    from recsys_spark.content import ItemFeatures

    cfg = cfg_factory(*SMALL, "content.explain_users=5", "content.min_items=2")
    for stage in ("generate", "ingest", "split"):
        stages.STAGES[stage](spark, cfg)
    res = stages.run_content(spark, cfg)
    c = res["counts"]
    train = stages.read_split(spark, cfg, "train").unionByName(stages.read_split(spark, cfg, "valid"))
    assert c["ratings"] == train.count()
    assert c["catalog_items"] == c["items_with_features"] == 80  # every generated item has genres
    assert c["users_with_profiles"] == train.select("user_idx").distinct().count()
    assert c["explained_rows"] == 5 * 10 and c["explained_without_reason"] == 0
    # the generated users have ages: the default age-segment prior accounts for every one of them
    users = stages.read_ingested(spark, cfg, "users")
    assert sum(c["users_by_segment"].values()) == users.count() and not {"(global prior)", "(no segment)"} & set(c["users_by_segment"])
    assert c["prior_groups"] >= len(c["users_by_segment"])  # the default trend: one prior per (age group, period)
    assert set(c["users_by_segment"]) <= {"aged under 18", "aged 18-24", "aged 25-34", "aged 35-44", "aged 45-55", "aged 56+"}
    out = cfg.stage_path("content", "content")
    feats = ItemFeatures.load(f"{out}/features")  # the saved transform featurises items again, identically
    redone = feats.transform(stages.read_ingested(spark, cfg, "items"), stages.side_data(spark, cfg).tags, train)
    again = {r["item_idx"]: r["values"] for r in redone.collect()}
    for r in feats.vectors.collect():
        assert again[r["item_idx"]] == pytest.approx(r["values"])
    nb = spark.read.parquet(f"{out}/neighbors")
    assert nb.columns == ["a", "b", "sim", "support"] and nb.where("a = b").count() == 0
    assert spark.read.parquet(f"{out}/terms").count() > 0
    assert stages.run_content(spark, cfg)["skipped"]
    with pytest.raises(ValueError, match="not a content model"):
        stages.run_content(spark, cfg, "bias")


def test_pipeline_orders_the_stages_a_config_needs_from_their_declarations(cfg_factory, monkeypatch):
    from recsys_spark import pipeline

    names = 'models.names=["bias", "item_knn", "content", "als", "gmf"]'
    planned = pipeline.pipeline_stages(cfg_factory(names, 'factorize.model="als"'))
    assert planned == [
        "generate", "ingest", "split",
        "content", "export_features",  # the export adds the content model's terms: it reads the content output
        "factorize", "neighbors",
        "predict:bias", "predict:item_knn", "predict:content", "predict:als", "predict:gmf", "blend", "final", "evaluate", "publish",
    ]  # fmt: skip
    # only what models.names needs: no export stage without its model, no generate for a real dataset
    assert pipeline.pipeline_stages(cfg_factory('models.names=["popularity"]')) == [
        "generate", "ingest", "split", "predict:popularity", "blend", "final", "evaluate", "publish",
    ]  # fmt: skip
    # publish needs the final lists and a tracking location
    without_final = pipeline.pipeline_stages(cfg_factory('models.names=["popularity"]', "final.enabled=false"))
    assert "final" not in without_final and "publish" not in without_final
    assert "publish" not in pipeline.pipeline_stages(cfg_factory('models.names=["popularity"]', "tracking.enabled=false"))
    assert pipeline.pipeline_stages(cfg_factory("dataset.kind=ml-100k", 'models.names=["bias"]'))[0] == "ingest"
    # a stage reading its own downstream output cannot be ordered
    bad = stages.Stage(
        name="loop", run=lambda *a, **k: {}, help="", sections=(), instances=lambda cfg: [None],
        inputs=lambda cfg, _m=None: [cfg.stage_path("evaluate")], outputs=lambda cfg, _m=None: [cfg.stage_path("splits")],
    )  # fmt: skip
    monkeypatch.setitem(stages.STAGES, "loop", bad)
    with pytest.raises(ValueError, match="read each other's outputs"):
        pipeline.plan(cfg_factory('models.names=["popularity"]'))
