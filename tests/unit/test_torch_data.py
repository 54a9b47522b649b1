"""The Arrow loader: exactly-once sharding, seeded order, declared dtypes (no Spark needed)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")

from recsys_spark.torch import data as td  # noqa: E402

N = 1000


@pytest.fixture(scope="module")
def table_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("interactions")
    ids = np.arange(N)
    # 3 files of uneven size, each with several row groups (row_group_size 64)
    for j, chunk in enumerate(np.split(ids, [410, 700])):
        t = pa.table({
            "user_idx": pa.array(chunk // 10, pa.int32()), "item_idx": pa.array(chunk, pa.int32()),
            "rating": pa.array((chunk % 5 + 1).astype(np.float32)),
        })  # fmt: skip
        pq.write_table(t, d / f"part-{j:05d}.parquet", row_group_size=64)
    return str(d)


COLS = {"item_idx": torch.int64, "user_idx": torch.int32, "rating": torch.float32}


def _rows(ds):
    return [int(x) for b in ds for x in b["item_idx"]]


def test_units_are_row_groups(table_dir):
    units = td.list_units(table_dir)
    assert sum(u.rows for u in units) == N
    assert len(units) == 7 + 5 + 5  # ceil(410/64), ceil(290/64), ceil(300/64)


def test_dtypes_and_batch_sizes(table_dir):
    ds = td.ArrowDataset(table_dir, COLS, batch_size=100)
    batches = list(ds)
    assert [len(b["item_idx"]) for b in batches] == [100] * 10
    b = batches[0]
    assert b["item_idx"].dtype == torch.int64 and b["user_idx"].dtype == torch.int32 and b["rating"].dtype == torch.float32
    assert _rows(ds) == list(range(N))  # no shuffle: file order
    assert [len(x["item_idx"]) for x in td.ArrowDataset(table_dir, COLS, batch_size=300)] == [300, 300, 300, 100]
    assert [len(x["item_idx"]) for x in td.ArrowDataset(table_dir, COLS, batch_size=300, drop_last=True)] == [300, 300, 300]


@pytest.mark.parametrize("shuffle", [False, True])
def test_every_row_exactly_once_across_two_ranks_and_two_workers(table_dir, shuffle):
    seen = []
    for rank in range(2):
        ds = td.ArrowDataset(table_dir, COLS, batch_size=32, shuffle=shuffle, shuffle_buffer=128, seed=3, rank=rank, world_size=2)
        ds.set_epoch(1)
        dl = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
        seen.append(_rows(dl))
    assert len(seen[0]) > 0 and len(seen[1]) > 0
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == list(range(N))


def test_seeded_order_is_reproducible_and_changes_with_epoch_and_seed(table_dir):
    def order(seed, epoch):
        ds = td.ArrowDataset(table_dir, COLS, batch_size=50, shuffle=True, shuffle_buffer=200, seed=seed)
        ds.set_epoch(epoch)
        return _rows(ds)

    a = order(7, 0)
    assert a == order(7, 0)
    assert sorted(a) == list(range(N))
    assert a != list(range(N))
    assert a != order(7, 1)
    assert a != order(8, 0)


def test_shuffle_mixes_rows_across_row_groups(table_dir):
    ds = td.ArrowDataset(table_dir, COLS, batch_size=64, shuffle=True, shuffle_buffer=512, seed=1)
    first = next(iter(ds))["item_idx"].numpy()
    assert len({int(x) // 64 for x in first}) > 2  # a buffer of 512 rows mixes several 64-row groups


def test_errors_name_the_problem(table_dir, tmp_path):
    with pytest.raises(ValueError, match="missing column"):
        td.ArrowDataset(table_dir, {"nope": torch.int64})
    with pytest.raises(ValueError, match="backend"):
        td.load("csv", table_dir, COLS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no Parquet row groups"):
        td.ArrowDataset(str(tmp_path / "empty"), COLS)
