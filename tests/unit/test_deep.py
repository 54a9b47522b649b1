"""Deep models: networks, the training loop, Spark scoring, TorchDistributor (tiny data)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")

from recsys_spark.recommender import Scale  # noqa: E402
from recsys_spark.schemas import RATINGS_SCHEMA  # noqa: E402
from recsys_spark.torch import models as tm  # noqa: E402
from recsys_spark.torch.recommender import DeepRecommender  # noqa: E402
from recsys_spark.torch.train import TrainSpec, _sample_negatives, load_state, run, train  # noqa: E402
from tests.contract.model_contract import ClassScopedContract  # noqa: E402

NU, NI = 60, 40


def _block_data(seed: int = 0):
    """Two user groups, each rating its own half of the items (a structure worth learning)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(NU):
        half = np.arange(NI // 2) + (NI // 2 if u % 2 else 0)
        for i in rng.choice(half, size=12, replace=False):
            rows.append((u, int(i), float(4 + (u + i) % 2)))
    return np.array(rows)


def _write(arr, path, parts=2, row_group=50):
    path.mkdir(parents=True, exist_ok=True)
    for j, ch in enumerate(np.array_split(arr, parts)):
        t = pa.table({"user_idx": pa.array(ch[:, 0].astype(np.int32)), "item_idx": pa.array(ch[:, 1].astype(np.int32)),
                      "rating": pa.array(ch[:, 2].astype(np.float32))})  # fmt: skip
        pq.write_table(t, path / f"part-{j:05d}.parquet", row_group_size=row_group)
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("deep")
    arr = _block_data()
    rng = np.random.default_rng(1)
    perm = rng.permutation(len(arr))
    cut = int(0.8 * len(arr))
    train, valid = arr[perm[:cut]], arr[perm[cut:]]
    return {"train": _write(train, d / "train"), "valid": _write(valid, d / "valid", parts=1), "dir": d, "arr": arr,
            "train_arr": train, "valid_arr": valid}  # fmt: skip


def _loss_on(net, arr, keys):
    """The training objective with one negative per positive (the spec's ``n_neg=1``)."""
    u = torch.from_numpy(arr[:, 0].astype(np.int64))
    i = torch.from_numpy(arr[:, 1].astype(np.int64))
    neg = torch.from_numpy(_sample_negatives(u.numpy(), NI, keys, np.random.default_rng(5)))
    users, items = torch.cat([u, u]), torch.cat([i, neg])
    labels = torch.cat([torch.ones(len(u)), torch.zeros(len(u))])
    with torch.no_grad():
        return float(torch.nn.functional.binary_cross_entropy_with_logits(net(users, items), labels))


@pytest.mark.parametrize("kind", ["gmf", "mlp", "neumf"])
def test_one_epoch_lowers_the_loss(data, tmp_path, kind):
    spec = TrainSpec(
        kind=kind, data=data["train"], n_users=NU, n_items=NI, out_dir=str(tmp_path), epochs=1, batch_size=32, lr=0.01, n_neg=1
    )
    arr = data["arr"]
    keys = np.unique(arr[:, 0].astype(np.int64) * NI + arr[:, 1].astype(np.int64))
    torch.manual_seed(spec.seed)
    before = _loss_on(tm.build_net(kind, NU, NI), arr, keys)  # the same initial weights train() starts from
    res = train(spec)
    net = tm.build_net(kind, NU, NI)
    net.load_state_dict(load_state(res["state"]))
    assert _loss_on(net, arr, keys) < before
    assert res["history"][0]["samples"] == len(arr) * 0.8


def test_negatives_are_never_positives():
    users = np.repeat(np.arange(5), 200)
    keys = np.unique(np.array([u * 10 + i for u in range(5) for i in range(9)]))  # each user rated 9 of 10 items
    neg = _sample_negatives(users, 10, keys, np.random.default_rng(0))
    assert (neg == 9).all()


def test_row_models_learn_and_checkpoint(data, tmp_path):
    spec = TrainSpec(kind="autorec", data=data["train"], valid=data["valid"], n_users=NU, n_items=NI, out_dir=str(tmp_path / "a"),
                     epochs=30, batch_size=8, lr=0.05, l2=0.1, patience=30, net={"hidden": 16})  # fmt: skip
    # (at lr 0.01 this network ends at 0.532 against the constant's 0.500: it had not learned)
    res = train(spec)
    rmse = [h["valid_rmse"] for h in res["history"]]
    assert rmse[-1] < rmse[0]
    # learned: better than the constant that knows the training mean (on ratings of 4 and 5 any
    # constant in that range is already under 1, so an absolute bound could not tell)
    train_r, valid_r = data["train_arr"][:, 2], data["valid_arr"][:, 2]
    constant = float(np.sqrt(np.mean((valid_r - train_r.mean()) ** 2)))
    assert min(rmse) < constant, (min(rmse), constant)
    assert res["best"] == pytest.approx(min(rmse))
    saved = json.loads((tmp_path / "a" / "result.json").read_text())
    assert saved["best_epoch"] == int(np.argmin(rmse))
    spec = TrainSpec(kind="cdae", data=data["train"], valid=data["valid"], n_users=NU, n_items=NI, out_dir=str(tmp_path / "c"),
                     epochs=20, batch_size=8, lr=0.01, patience=20, net={"hidden": 8, "noise": 0.3})  # fmt: skip
    res = train(spec)
    ndcg = [h["valid_ndcg10"] for h in res["history"]]
    # a random ranking of 1 positive among 100 candidates has E[NDCG@10] = sum_{r<10} 0.01 / log2(r + 2) ~ 0.045
    assert max(ndcg) > 0.15 and max(ndcg) > 2 * ndcg[0]


def test_resume_continues_from_last_checkpoint(data, tmp_path):
    base = dict(kind="gmf", data=data["train"], n_users=NU, n_items=NI, out_dir=str(tmp_path), batch_size=32)
    train(TrainSpec(epochs=2, **base))
    res = train(TrainSpec(epochs=3, resume=True, **base))
    assert [h["epoch"] for h in res["history"]] == [2]


def test_neumf_pretrained_starts_from_the_towers():
    gmf, mlp = tm.GMF(NU, NI, 8), tm.MLP(NU, NI, 8, (16, 8))
    neu = tm.NeuMF(NU, NI, 8, 8, (16, 8))
    neu.load_pretrained(gmf, mlp, alpha=0.5)
    u, i = torch.arange(5), torch.arange(5)
    with torch.no_grad():
        assert torch.allclose(neu(u, i), 0.5 * gmf(u, i) + 0.5 * mlp(u, i), atol=1e-6)


def test_autorec_score_equals_reconstruction():
    net = tm.AutoRec(NU, NI, hidden=6)
    r = torch.rand(NI, NU)
    net.freeze_codes(r, torch.arange(NI))
    recon = net(r)
    u, i = torch.tensor([0, 3, 7]), torch.tensor([2, 2, 5])
    with torch.no_grad():
        assert torch.allclose(net.score(u, i), recon[i, u], atol=1e-5)


def test_unknown_kind_and_distributor():
    with pytest.raises(ValueError, match="kind"):
        tm.build_net("bpr", 2, 2)
    with pytest.raises(ValueError, match="distributor"):
        run(TrainSpec(kind="gmf", data="x", n_users=1, n_items=1, out_dir="x"), "mpi")


@pytest.mark.slow
def test_torch_distributor_runs_two_processes_in_local_2(spark, data, tmp_path):
    # NeuMF: every parameter must take part in the loss, or DDP's reducer fails on the second step
    spec = TrainSpec(kind="neumf", data=data["train"], valid=data["valid"], n_users=NU, n_items=NI, out_dir=str(tmp_path), epochs=2,
                     batch_size=32, net={"dim": 4, "mlp_dim": 4, "layers": [8]})  # fmt: skip
    res = run(spec, "spark", num_processes=2)
    assert res["world_size"] == 2
    # rank 0 read about half of the rows; the other half went to rank 1
    n = int(len(data["arr"]) * 0.8)
    assert 0 < res["history"][0]["samples"] < n
    assert (tmp_path / "best.pt").exists()
    assert res["best"] == res["best"]  # a validation metric was computed


def _spark_train(spark):
    arr = _block_data()
    return spark.createDataFrame([(int(u), int(i), float(r), 0) for u, i, r in arr], RATINGS_SCHEMA)


@pytest.mark.slow
def test_spark_scoring_equals_local_scoring(spark):
    model = DeepRecommender(
        name="neumf_explicit", kind="neumf", explicit=True, epochs=2, scale=Scale(0.5, 5.0), net={"dim": 4, "mlp_dim": 4, "layers": [8]}
    ).fit(_spark_train(spark))
    pairs = spark.createDataFrame([(u, i) for u in range(0, NU, 7) for i in range(0, NI, 3)], "user_idx int, item_idx int")
    got = {(r.user_idx, r.item_idx): r.prediction for r in model.predict(pairs).collect()}
    net = model.network()
    u = torch.tensor([k[0] for k in got])
    i = torch.tensor([k[1] for k in got])
    with torch.no_grad():
        local = np.clip(net.score(u, i).numpy(), 0.5, 5.0)
    assert np.allclose(list(got.values()), local, atol=1e-5)
    assert model.info["refit_epochs"] >= 1 and model.info["metric"] == "rmse"


class TestGMFContract(ClassScopedContract):
    def make(self):
        return DeepRecommender(name="gmf", kind="gmf", scale=self.scale, epochs=2, net={"dim": 4}, valid_fraction=0.0)


class TestNeuMFExplicitContract(ClassScopedContract):
    def make(self):
        return DeepRecommender(
            name="neumf_explicit",
            kind="neumf",
            explicit=True,
            scale=self.scale,
            epochs=2,
            net={"dim": 4, "mlp_dim": 4, "layers": [8]},
            valid_fraction=0.0,
        )


class TestAutoRecContract(ClassScopedContract):
    def make(self):
        return DeepRecommender(name="autorec", kind="autorec", scale=self.scale, epochs=3, net={"hidden": 8}, valid_fraction=0.0)


def test_distinct_negatives_avoid_rated_items_and_repeat_nothing():
    from recsys_spark.torch.evaluate import distinct_negatives

    n_items = 300
    rated = {0: set(range(0, 280)), 1: {5, 6, 7}}  # user 0: a heavy rater with 20 unrated items
    keys = np.array(sorted(u * n_items + i for u, s in rated.items() for i in s))
    negs = distinct_negatives(np.array([0, 1]), n_items, keys, 15, np.random.default_rng(0))
    for row, u in enumerate((0, 1)):
        assert len(set(negs[row])) == 15 and not set(negs[row]) & rated[u]
    with pytest.raises(ValueError, match="unrated"):
        distinct_negatives(np.array([0]), n_items, keys, 25, np.random.default_rng(0))


@pytest.mark.slow
def test_leave_last_out_holds_out_each_users_latest(spark):
    from recsys_spark.torch.evaluate import leave_last_out

    df = spark.createDataFrame(
        [(0, 1, 4.0, 10), (0, 2, 3.0, 30), (0, 3, 5.0, 20), (1, 4, 2.0, 5), (2, 5, 1.0, 1), (2, 6, 1.0, 1)], RATINGS_SCHEMA
    )
    train, test = leave_last_out(df)
    assert sorted((r.user_idx, r.item_idx) for r in test.collect()) == [(0, 2), (2, 6)]  # user 1 has one rating: kept for training
    assert train.count() + test.count() == df.count()


def test_neumf_pretraining_trains_both_towers_first(data, tmp_path):
    est = DeepRecommender(name="neumf", kind="neumf", pretrain=True, epochs=2, batch_size=32, net={"dim": 4, "mlp_dim": 4, "layers": [8]})
    spec = est._spec(data["train"], None, str(tmp_path / "run"), NU, NI, 0.0)
    res = est._train(spec)
    assert (tmp_path / "run" / "gmf" / "best.pt").exists() and (tmp_path / "run" / "mlp" / "best.pt").exists()
    gmf = load_state(str(tmp_path / "run" / "gmf" / "best.pt"))
    neu = load_state(res["state"])
    assert neu["gmf.user.weight"].shape == gmf["user.weight"].shape and len(res["history"]) == 2
