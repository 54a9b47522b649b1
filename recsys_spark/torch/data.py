"""Streaming exported Parquet into PyTorch.

:class:`ArrowDataset` is an ``IterableDataset`` over ``pyarrow.dataset``:

* the unit of work is a **row group** (one Parquet file may hold several);
  the row groups are listed once, in file order, and unit ``j`` goes to the
  stream ``j mod (world_size * num_workers)`` - streams are (distributed rank,
  DataLoader worker) pairs - so every row reaches exactly one stream, none is
  lost or read twice;
* with ``shuffle=True`` the unit order is permuted by ``seed + epoch`` (the
  same permutation on every rank, so the shards stay disjoint) and rows are
  shuffled inside a buffer of ``shuffle_buffer`` rows by a generator seeded
  with ``(seed, epoch, stream)``: the order is reproducible for a seed;
* batches are dicts of tensors with the dtypes declared in ``columns``
  (``{"user_idx": torch.int64, "label": torch.float32}``); Arrow columns are
  converted a record batch at a time with numpy (no per-row Python).

:class:`PetastormDataset` is the second backend behind the same interface
(``make_batch_reader`` over the same files; ``from_spark`` wraps
``make_spark_converter``).  petastorm needs an older Arrow/numpy/Spark stack
and is imported only when used; see ``constraints-petastorm.txt``.

``load(backend, path, ...)`` picks the backend by name.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

log = logging.getLogger(__name__)

BACKENDS = ("arrow", "petastorm")


@dataclass(frozen=True)
class Unit:
    """One row group of one Parquet file."""

    path: str
    row_group: int
    rows: int


def list_units(path: str) -> list[Unit]:
    """The row groups under ``path`` (a file or a directory of Parquet files), in file order."""
    files = sorted(pads.dataset(path, format="parquet").files)
    units = []
    for f in files:
        md = pq.ParquetFile(f).metadata
        units.extend(Unit(f, g, md.row_group(g).num_rows) for g in range(md.num_row_groups))
    return units


def stream_position(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(stream index, number of streams) of the caller: its distributed rank x DataLoader worker."""
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world_size = 0, 1
    info = get_worker_info()
    wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * nw + wid, world_size * nw


def to_tensors(columns: dict[str, torch.dtype], arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {c: torch.from_numpy(np.ascontiguousarray(arrays[c])).to(dt) for c, dt in columns.items()}


class _Batcher:
    """Cuts a stream of column chunks into batches, shuffling inside a bounded buffer."""

    def __init__(self, columns: list[str], batch_size: int, buffer: int, rng: np.random.Generator | None, drop_last: bool):
        self.columns, self.batch_size, self.buffer, self.rng, self.drop_last = columns, batch_size, buffer, rng, drop_last
        self.parts: list[dict[str, np.ndarray]] = []
        self.n = 0

    def add(self, chunk: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        self.parts.append(chunk)
        self.n += len(chunk[self.columns[0]])
        if self.n >= max(self.buffer, self.batch_size):
            yield from self._emit(final=False)

    def finish(self) -> Iterator[dict[str, np.ndarray]]:
        if self.n:
            yield from self._emit(final=True)

    def _emit(self, final: bool) -> Iterator[dict[str, np.ndarray]]:
        data = {c: np.concatenate([p[c] for p in self.parts]) for c in self.columns}
        n = self.n
        if self.rng is not None:
            order = self.rng.permutation(n)
            data = {c: v[order] for c, v in data.items()}
        full = (n // self.batch_size) * self.batch_size
        for s in range(0, full, self.batch_size):
            yield {c: v[s : s + self.batch_size] for c, v in data.items()}
        rest = {c: v[full:] for c, v in data.items()}
        self.parts, self.n = ([rest], n - full) if n > full else ([], 0)
        if final and self.n and not self.drop_last:
            yield rest
            self.parts, self.n = [], 0


def _batches(ds, chunks: Iterator[dict[str, np.ndarray]]) -> Iterator[dict[str, torch.Tensor]]:
    """Either backend's column chunks -> shuffled (seed, epoch, stream) batches of tensors."""
    stream, _ = stream_position(ds.rank, ds.world_size)
    rng = np.random.default_rng([ds.seed, ds.epoch, stream]) if ds.shuffle else None
    batcher = _Batcher(list(ds.columns), ds.batch_size, ds.shuffle_buffer, rng, ds.drop_last)
    for chunk in chunks:
        for b in batcher.add(chunk):
            yield to_tensors(ds.columns, b)
    for b in batcher.finish():
        yield to_tensors(ds.columns, b)


class _StreamDataset(IterableDataset):
    """What both backends share: batching, shuffling, the stream position and the epoch."""

    def __init__(
        self, columns: dict[str, torch.dtype], batch_size: int, shuffle: bool, shuffle_buffer: int, seed: int,
        rank: int | None, world_size: int | None, drop_last: bool,
    ) -> None:  # fmt: skip
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.columns = dict(columns)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.shuffle_buffer = shuffle_buffer if shuffle else 0
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        yield from _batches(self, self._chunks())

    def _chunks(self) -> Iterator[dict[str, np.ndarray]]:  # pragma: no cover - each backend defines it
        raise NotImplementedError


class ArrowDataset(_StreamDataset):
    """Batches of tensors from Parquet row groups, sharded over ranks and workers.

    ``columns``: name -> torch dtype (read and converted in that order).
    ``rank``/``world_size`` default to ``torch.distributed``'s when it is
    initialised.  Call ``set_epoch(e)`` before each epoch for a new shuffle.
    """

    def __init__(
        self, path: str, columns: dict[str, torch.dtype], batch_size: int = 1024, *, shuffle: bool = False,
        shuffle_buffer: int = 65536, seed: int = 0, rank: int | None = None, world_size: int | None = None,
        drop_last: bool = False, read_batch_rows: int = 65536,
    ) -> None:  # fmt: skip
        super().__init__(columns, batch_size, shuffle, shuffle_buffer, seed, rank, world_size, drop_last)
        self.path = path
        self.read_batch_rows = read_batch_rows
        self.units = list_units(path)
        if not self.units:
            raise ValueError(f"{path}: no Parquet row groups to read")
        schema = pq.ParquetFile(self.units[0].path).schema_arrow
        missing = [c for c in self.columns if c not in schema.names]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; the file has {schema.names}")

    @property
    def num_rows(self) -> int:
        return sum(u.rows for u in self.units)

    def my_units(self) -> list[Unit]:
        stream, streams = stream_position(self.rank, self.world_size)
        units = self.units
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(len(units))
            units = [units[j] for j in order]
        return units[stream::streams]

    def _chunks(self) -> Iterator[dict[str, np.ndarray]]:
        names = list(self.columns)
        files: dict[str, pq.ParquetFile] = {}
        for u in self.my_units():
            pf = files.setdefault(u.path, pq.ParquetFile(u.path))
            for rb in pf.iter_batches(batch_size=self.read_batch_rows, row_groups=[u.row_group], columns=names):
                yield {c: rb.column(c).to_numpy(zero_copy_only=False) for c in names}


class PetastormDataset(_StreamDataset):
    """The petastorm backend: ``make_batch_reader`` over the same Parquet files, same batches.

    Sharding uses petastorm's ``cur_shard``/``shard_count`` over row groups
    with the same stream numbering as :class:`ArrowDataset`; shuffling uses
    ``shuffle_row_groups`` with a seed plus the same in-buffer shuffle.
    """

    def __init__(
        self, path: str, columns: dict[str, torch.dtype], batch_size: int = 1024, *, shuffle: bool = False,
        shuffle_buffer: int = 65536, seed: int = 0, rank: int | None = None, world_size: int | None = None,
        drop_last: bool = False, workers_count: int = 1,
    ) -> None:  # fmt: skip
        super().__init__(columns, batch_size, shuffle, shuffle_buffer, seed, rank, world_size, drop_last)
        self.url = path if "://" in path else "file://" + os.path.abspath(path)
        self.workers_count = workers_count

    def _chunks(self) -> Iterator[dict[str, np.ndarray]]:
        from petastorm import make_batch_reader

        stream, streams = stream_position(self.rank, self.world_size)
        with make_batch_reader(
            self.url, schema_fields=list(self.columns), num_epochs=1, cur_shard=stream, shard_count=streams,
            shuffle_row_groups=self.shuffle, seed=self.seed + self.epoch, workers_count=self.workers_count,
            reader_pool_type="dummy",
        ) as reader:  # fmt: skip
            for nt in reader:
                yield {c: np.asarray(getattr(nt, c)) for c in self.columns}

    @staticmethod
    def from_spark(df, cache_dir: str):
        """A petastorm ``SparkDatasetConverter`` for ``df`` (cached as Parquet under ``cache_dir``)."""
        from petastorm.spark import SparkDatasetConverter, make_spark_converter

        spark = df.sparkSession
        url = cache_dir if "://" in cache_dir else "file://" + os.path.abspath(cache_dir)
        spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, url)
        return make_spark_converter(df)


def load(backend: str, path: str, columns: dict[str, torch.dtype], batch_size: int = 1024, **kw) -> IterableDataset:
    """The dataset of ``backend`` (one of :data:`BACKENDS`) over ``path``."""
    if backend == "arrow":
        return ArrowDataset(path, columns, batch_size, **kw)
    if backend == "petastorm":
        return PetastormDataset(path, columns, batch_size, **kw)
    raise ValueError(f"loader backend must be one of {BACKENDS}, got {backend!r}")


def read_columns(path: str, columns: list[str]) -> dict[str, np.ndarray]:
    """Whole columns of a (small) exported table as numpy arrays, in file order (for in-memory models)."""
    table = pads.dataset(path, format="parquet").to_table(columns=columns)
    return {c: table.column(c).to_numpy() for c in columns}
