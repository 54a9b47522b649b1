"""The champion: the loader on inline files, the registered model by alias, spark_udf, HTTP serving, the card."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recsys_spark.serving import recsys_spark_champion as champ


# -- the loader alone, on files written here --------------------------------------------------
def _files(root: Path) -> Path:
    lists = pd.DataFrame({
        "user_id": ["u1"] * 3 + ["u2"] * 3,
        "rank": [2, 1, 3, 1, 2, 3],  # stored out of order: the loader sorts by rank
        "item_id": ["b", "a", "c", "c", "d", "a"],
        "title": ["B", "A", "C", "C", "D", "A"],
        "score": [0.8, 0.9, 0.7, 0.5, 0.4, 0.3],
        "explanation": ["eb", "ea", "ec", "ec2", "ed", "ea2"],
        "source": ["blend"] * 6,
    })  # fmt: skip
    cold = pd.DataFrame({"rank": [1, 2], "item_id": ["p", "q"], "title": ["P", "Q"], "score": [9.0, 8.0], "explanation": ["new", "new"]})
    root.mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(lists), root / "lists.parquet")
    pq.write_table(pa.Table.from_pandas(cold), root / "cold_start.parquet")
    (root / "meta.json").write_text(json.dumps({"k": 3}))
    return root


def test_the_loader_answers_known_unknown_k_and_exclude(tmp_path):
    model = champ._load_pyfunc(str(_files(tmp_path / "data")))
    out = model.predict(pd.DataFrame({"user_id": ["u1", "nobody", "u2", "u1"], "k": [None, None, 2, None],
                                      "exclude": [None, None, None, ["a", "zz"]]}))  # fmt: skip
    assert list(out.columns) == list(champ.OUTPUT_COLUMNS) and len(out) == 4
    assert out.loc[0, "item_ids"] == ["a", "b", "c"] and out.loc[0, "titles"] == ["A", "B", "C"] and out.loc[0, "known"]
    assert out.loc[0, "explanations"] == ["ea", "eb", "ec"] and out.loc[0, "scores"] == [0.9, 0.8, 0.7]
    assert (out.loc[1, "known"], out.loc[1, "source"], out.loc[1, "item_ids"]) == (False, "cold_start", ["p", "q"])
    assert out.loc[2, "item_ids"] == ["c", "d"]
    assert out.loc[3, "item_ids"] == ["b", "c"]  # excluded, so shorter than k
    for bad, why in (({"user_id": ["u1"], "k": [0]}, "k must be at least 1"), ({"user_id": [""]}, "needs a user_id"),
                     ({"item": ["a"]}, "needs a user_id column")):  # fmt: skip
        with pytest.raises(champ.InvalidRequest, match=why):
            model.predict(pd.DataFrame(bad))


# -- the pipeline's publish stage, the registry, batch and HTTP -------------------------------
@pytest.fixture(scope="module")
def published(shop_pipeline):
    """The pipeline on the generic table with string ids (tests/conftest.py), publish included."""
    cfg, res, _ = shop_pipeline
    return cfg, res


def _final_lists(spark, cfg) -> dict[str, list[str]]:
    from recsys_spark.stages.final import read_final

    rows = read_final(spark, cfg).select("user_id", "rank", "item_id").collect()
    lists: dict[str, list[tuple[int, str]]] = {}
    for r in rows:
        lists.setdefault(r["user_id"], []).append((r["rank"], r["item_id"]))
    return {u: [i for _, i in sorted(v)] for u, v in lists.items()}


def test_publish_registers_the_champion_and_the_round_trip_equals_the_final_lists(spark, published):
    from recsys_spark import serving
    from recsys_spark.stages import layout

    cfg, res = published
    counts = res["publish"]["counts"]
    assert counts["alias"] == "champion" and counts["model_uri"] == "models:/recsys-spark-shop@champion"
    final = _final_lists(spark, cfg)
    assert counts["users"] == len(final) and counts["cold_start_rows"] == cfg.models.k
    model = serving.load(cfg)
    users = sorted(final)
    out = model.predict(pd.DataFrame({"user_id": users}))
    assert {u: list(v) for u, v in zip(out["user_id"], out["item_ids"], strict=True)} == final
    assert out["known"].all() and (out["source"] == "blend").all()
    assert all(len(e) == len(i) and all(e) for e, i in zip(out["explanations"], out["item_ids"], strict=True))
    cold = spark.read.parquet(f"{layout.final(cfg)}/cold_start").orderBy("rank").select("item_id").collect()
    new = model.predict(pd.DataFrame({"user_id": ["never-seen"], "k": [4]})).iloc[0]
    assert (new["known"], new["source"], list(new["item_ids"])) == (False, "cold_start", [r[0] for r in cold][:4])
    card = Path(layout.publish(cfg), "model_card.md").read_text()
    for section in ("## What is served", "## Data", "## Evaluation protocol", "## Selection", "## Where it is weak", "## Limits"):
        assert section in card, section
    assert "diversity (co-occurrence)" in card  # the items have no genres here
    assert "| ndcg@10 |" in card and "[" in card.split("| ndcg@10 |")[1].splitlines()[0]  # with its interval


def test_batch_scoring_with_spark_udf_writes_the_final_lists(spark, published, tmp_path):
    from pyspark.sql import functions as F

    from recsys_spark import serving
    from recsys_spark.stages import layout

    cfg, _ = published
    udf = serving.batch_udf(spark, cfg)
    users = layout.read_ingested(spark, cfg, "user_map").select(F.col("user_id").cast("string").alias("user_id"))
    scored = users.withColumn("rec", udf(F.struct("user_id"))).select("user_id", "rec.known", "rec.item_ids")
    scored.write.parquet(str(tmp_path / "batch"))
    got = {r["user_id"]: list(r["item_ids"]) for r in spark.read.parquet(str(tmp_path / "batch")).collect()}
    assert got == _final_lists(spark, cfg)


def _post(url: str, body: bytes | str, ctype: str = "application/json") -> tuple[int, dict]:
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(f"{url}/invocations", data=data, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_the_served_champion_answers_over_http_and_survives_bad_requests(spark, published, tmp_path):
    from recsys_spark import serving

    cfg, _ = published
    final = _final_lists(spark, cfg)
    user = sorted(final)[0]
    with serving.serve(cfg, log_file=tmp_path / "serve.log") as url:
        status, body = _post(url, json.dumps({"dataframe_records": [{"user_id": user, "k": 5}]}))
        assert status == 200, body
        pred = body["predictions"][0]
        assert pred["known"] and pred["item_ids"] == final[user][:5] and len(pred["explanations"]) == 5
        status, body = _post(url, json.dumps({"dataframe_records": [{"user_id": "someone-new"}]}))
        assert status == 200 and body["predictions"][0]["source"] == "cold_start" and not body["predictions"][0]["known"]
        records = ([{"k": 3}], [{"user_id": user, "k": 0}])  # no user_id; k < 1
        bad_bodies = ("{not json", *[json.dumps({"dataframe_records": r}) for r in records])
        for bad in bad_bodies:
            status, body = _post(url, bad)
            assert 400 <= status < 500 and body.get("message"), (bad, status, body)
        assert "k must be at least 1" in body["message"]
        with urllib.request.urlopen(f"{url}/ping", timeout=5) as r:  # still up
            assert r.status == 200
        status, _ = _post(url, json.dumps({"dataframe_records": [{"user_id": user}]}))
        assert status == 200


def test_the_alias_moves_to_a_new_version_and_back(spark, published):
    import mlflow

    from recsys_spark import serving, stages, tracking

    cfg, res = published
    first = res["publish"]["counts"]["version"]
    again = stages.STAGES["publish"].run(spark, cfg, force=True)["counts"]
    assert int(again["version"]) == int(first) + 1
    client = mlflow.MlflowClient(tracking.tracking_uri(cfg)[0])
    name = serving.model_name(cfg)
    assert str(client.get_model_version_by_alias(name, "champion").version) == again["version"]
    client.set_registered_model_alias(name, "champion", first)  # the roll back of docs/deploy.md
    assert str(client.get_model_version_by_alias(name, "champion").version) == first
    assert serving.load(cfg).metadata.run_id == res["publish"]["counts"]["run_id"]
