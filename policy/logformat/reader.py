"""Reading v2 logs (layout in :mod:`policy.logformat`) in bounded-memory chunks, and v1 ``.npz`` logs."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from policy.exceptions import LogFormatError
from policy.logformat.writer import DECISIONS, ITEMS, REQUIRED, SIDECAR, is_reward_column
from policy.logs import LoggedData, read_logs

STANDARD = set(REQUIRED) | {"timestamp"}


def _is_list_of(t: pa.DataType, kinds: Callable[[pa.DataType], bool]) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) and kinds(t.value_type)


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_floating(t) or pa.types.is_integer(t)


def _list_parts(col: pa.Array, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(lengths int64[n], flat values)`` of a list column; nulls are an error naming the column."""
    if col.null_count:
        raise LogFormatError(name, f"has {col.null_count} null rows")
    if pa.types.is_fixed_size_list(col.type):
        n, k = len(col), col.type.list_size
        return np.full(n, k, dtype=np.int64), col.flatten().to_numpy(zero_copy_only=False)
    return (pc.list_value_length(col).to_numpy(zero_copy_only=False).astype(np.int64),
            col.flatten().to_numpy(zero_copy_only=False))


class LogReader:
    """A v2 log directory, opened and checked; :meth:`chunks` yields :class:`LoggedData`.

    Parameters
    ----------
    path
        The log directory (with ``decisions.parquet`` and ``items.parquet``).
    reward
        Reward column to put in ``LoggedData.reward`` (default ``reward``, else ``click``, else the first).
    """

    def __init__(self, path: str | os.PathLike[str], reward: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise FileNotFoundError(f"no v2 log directory at {self.path}")
        for name in (DECISIONS, ITEMS):
            if not (self.path / name).is_file():
                raise LogFormatError("file", f"{self.path} has no {name}")
        try:
            self._file = pq.ParquetFile(self.path / DECISIONS)
        except (pa.ArrowInvalid, OSError) as exc:
            raise LogFormatError("file", f"{self.path / DECISIONS} is not a Parquet file ({exc})") from None
        schema = self._file.schema_arrow
        self._check_schema(schema)
        self.reward_columns = [n for n in schema.names if is_reward_column(n)]
        if not self.reward_columns:
            raise LogFormatError("reward", "no reward column (reward, click, value or reward_<name>)")
        if reward is None:
            reward = next((r for r in ("reward", "click") if r in self.reward_columns), self.reward_columns[0])
        if reward not in self.reward_columns:
            raise LogFormatError(reward, f"is not a reward column of this log ({', '.join(self.reward_columns)})")
        self.reward = reward
        self.extra_columns = [n for n in schema.names if n not in STANDARD and not is_reward_column(n)]
        self.has_timestamp = "timestamp" in schema.names
        self.n_rows = self._file.metadata.num_rows
        self._load_items()
        meta = self._sidecar()
        self.segment_names: tuple[str, ...] = tuple(meta["segments"]) if meta.get("segments") else self._scan_segments()
        self.max_k = int(meta["max_k"]) if meta.get("max_k") else self._scan_max_k()

    # ------------------------------------------------------------------ opening
    @staticmethod
    def _check_schema(schema: pa.Schema) -> None:
        for name in REQUIRED:
            if name not in schema.names:
                raise LogFormatError(name, "missing required column of decisions.parquet")
        t = schema.field("segment").type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t)
                or (pa.types.is_dictionary(t) and pa.types.is_string(t.value_type))):
            raise LogFormatError("segment", f"must be a string column, got {t}")
        checks = {"context": lambda t: _is_list_of(t, _numeric),
                  "candidate_ids": lambda t: _is_list_of(t, pa.types.is_integer),
                  "action_id": pa.types.is_integer,
                  "propensity": pa.types.is_floating}
        for name, ok in checks.items():
            if not ok(schema.field(name).type):
                raise LogFormatError(name, f"has the wrong type {schema.field(name).type} (see policy.logformat)")
        if "timestamp" in schema.names and not pa.types.is_timestamp(schema.field("timestamp").type):
            raise LogFormatError("timestamp", f"must be a timestamp column, got {schema.field('timestamp').type}")
        for name in schema.names:
            t = schema.field(name).type
            if is_reward_column(name) and not (_numeric(t) or pa.types.is_boolean(t)):
                raise LogFormatError(name, f"reward columns must be numeric, got {t}")

    def _sidecar(self) -> dict:
        side = self.path / SIDECAR
        if not side.is_file():
            return {}
        try:
            meta = json.loads(side.read_text())
        except ValueError as exc:
            raise LogFormatError(SIDECAR, f"is not JSON ({exc})") from None
        if meta.get("version") != 2:
            raise LogFormatError(SIDECAR, f"version must be 2, got {meta.get('version')!r}")
        return meta

    def _load_items(self) -> None:
        try:
            table = pq.read_table(self.path / ITEMS)
        except (pa.ArrowInvalid, OSError) as exc:
            raise LogFormatError("file", f"{self.path / ITEMS} is not a Parquet file ({exc})") from None
        for name in ("item_id", "features"):
            if name not in table.column_names:
                raise LogFormatError(f"items.{name}", "missing required column of items.parquet")
        if not pa.types.is_integer(table.schema.field("item_id").type):
            raise LogFormatError("items.item_id", "must be an integer column")
        if not _is_list_of(table.schema.field("features").type, _numeric):
            raise LogFormatError("items.features", "must be a list of numbers")
        if table.num_rows == 0:
            raise LogFormatError("items.item_id", "the item table is empty")
        ids = table.column("item_id").combine_chunks()
        if ids.null_count:
            raise LogFormatError("items.item_id", "has null ids")
        ids = ids.to_numpy().astype(np.int64)
        lengths, flat = _list_parts(table.column("features").combine_chunks(), "items.features")
        if lengths.min() != lengths.max() or lengths[0] == 0:
            raise LogFormatError("items.features", f"every item needs the same number (>= 1) of features; "
                                                   f"lengths {lengths.min()}..{lengths.max()}")
        feats = flat.astype(np.float32).reshape(ids.shape[0], int(lengths[0]))
        if not np.all(np.isfinite(feats)):
            raise LogFormatError("items.features", "has non-finite values")
        if "valid_from" in table.column_names:
            vf = table.column("valid_from").combine_chunks()
            if not pa.types.is_timestamp(vf.type) or vf.null_count:
                raise LogFormatError("items.valid_from", "must be a non-null timestamp column")
            vf = pc.cast(vf, pa.timestamp("us", tz=vf.type.tz)).to_numpy().astype(np.int64)
        else:
            vf = np.zeros(ids.shape[0], dtype=np.int64)
            if np.unique(ids).size != ids.size:
                raise LogFormatError("items.item_id", "ids repeat but there is no valid_from column")
        order = np.lexsort((vf, ids))
        # One zero row past the end: padding slots (item row -1) gather it.
        self._item_ids, self._item_vf = ids[order], vf[order]
        self._item_feats = np.concatenate([feats[order], np.zeros((1, feats.shape[1]), dtype=np.float32)])
        self.versioned = "valid_from" in table.column_names
        self.da = feats.shape[1]

    def _scan_segments(self) -> tuple[str, ...]:
        names: dict[str, None] = {}
        for batch in self._file.iter_batches(columns=["segment"], batch_size=1 << 18):
            col = batch.column(0)
            if col.null_count:
                raise LogFormatError("segment", "has null rows")
            for s in pc.unique(col.cast(pa.string())).to_pylist():
                names.setdefault(s, None)
        if "" in names:
            raise LogFormatError("segment", "names must be non-empty")
        return tuple(names)

    def _scan_max_k(self) -> int:
        k = 0
        for batch in self._file.iter_batches(columns=["candidate_ids"], batch_size=1 << 18):
            lengths, _ = _list_parts(batch.column(0), "candidate_ids")
            if lengths.size:
                k = max(k, int(lengths.max()))
        return k

    # ------------------------------------------------------------------ reading
    def _item_rows(self, ids: np.ndarray, times: np.ndarray | None, first_row: int) -> np.ndarray:
        """Item-table row of each id (the version valid at each row's time); -1 stays -1."""
        real = ids >= 0
        pos = np.searchsorted(self._item_ids, ids, side="right") - 1
        found = real & (pos >= 0) & (self._item_ids[np.maximum(pos, 0)] == ids)
        if np.any(real & ~found):
            r, c = np.argwhere(real & ~found)[0]
            raise LogFormatError("candidate_ids", f"row {first_row + r}: id {ids[r, c]} is not in items.parquet")
        if self.versioned:
            if times is None:
                raise LogFormatError("timestamp", "the item table is time-versioned, so decisions need timestamps")
            t = np.broadcast_to(times[:, None], ids.shape)
            while True:
                late = found & (self._item_vf[np.maximum(pos, 0)] > t)
                if not late.any():
                    break
                prev = np.maximum(pos - 1, 0)
                ok = late & (pos > 0) & (self._item_ids[prev] == ids)
                if np.any(late & ~ok):
                    r, c = np.argwhere(late & ~ok)[0]
                    raise LogFormatError("timestamp", f"row {first_row + r}: item {ids[r, c]} has no version "
                                                      "valid at the decision's time")
                pos = np.where(late, pos - 1, pos)
        return np.where(real, pos, -1)

    def _to_logged(self, batch: pa.RecordBatch, first_row: int) -> LoggedData:
        n = batch.num_rows
        col = {name: batch.column(i) for i, name in enumerate(batch.schema.names)}
        seg_col = col["segment"].cast(pa.string()) if pa.types.is_dictionary(col["segment"].type) else col["segment"]
        seg = pc.index_in(seg_col, value_set=pa.array(self.segment_names)).to_numpy(zero_copy_only=False)
        if np.any(np.isnan(seg.astype(float))):
            raise LogFormatError("segment", f"row {first_row + int(np.argmax(np.isnan(seg.astype(float))))}: "
                                            "null or unknown segment")
        lengths, flat = _list_parts(col["context"], "context")
        if n and (lengths.min() != lengths.max() or lengths[0] == 0):
            r = int(np.argmax(lengths != lengths[0])) if lengths[0] else 0
            raise LogFormatError("context", f"row {first_row + r}: every row needs the same number (>= 1) of "
                                            f"features, got {lengths.min()}..{lengths.max()}")
        context = flat.astype(np.float32).reshape(n, int(lengths[0]) if n else 0)
        k_valid, flat_ids = _list_parts(col["candidate_ids"], "candidate_ids")
        if np.any(k_valid < 1) or np.any(k_valid > self.max_k):
            r = int(np.argmax((k_valid < 1) | (k_valid > self.max_k)))
            raise LogFormatError("candidate_ids", f"row {first_row + r}: needs 1..{self.max_k} ids, got {k_valid[r]}")
        ids = np.full((n, self.max_k), -1, dtype=np.int64)
        ids[np.arange(self.max_k)[None, :] < k_valid[:, None]] = flat_ids.astype(np.int64)
        if np.any(flat_ids < 0):
            raise LogFormatError("candidate_ids", "ids must be >= 0")
        for name in ("action_id", "propensity", self.reward):
            if col[name].null_count:
                raise LogFormatError(name, f"has {col[name].null_count} null rows")
        action_id = col["action_id"].to_numpy(zero_copy_only=False).astype(np.int64)
        match = ids == action_id[:, None]
        if not match.any(axis=1).all():
            r = int(np.argmax(~match.any(axis=1)))
            raise LogFormatError("action_id", f"row {first_row + r}: {action_id[r]} is not among the row's candidate_ids")
        times = None
        if "timestamp" in col:
            ts = col["timestamp"]
            if ts.null_count:
                raise LogFormatError("timestamp", f"has {ts.null_count} null rows")
            times = pc.cast(ts, pa.timestamp("us", tz=ts.type.tz)).to_numpy(zero_copy_only=False).astype(np.int64)
        rows = self._item_rows(ids, times, first_row)
        candidates = np.take(self._item_feats, rows, axis=0)  # row -1 is the zero row
        arrays = {
            "segment": seg.astype(np.int64), "segment_names": self.segment_names, "context": context,
            "candidates": candidates, "action": np.argmax(match, axis=1),
            "reward": col[self.reward].to_numpy(zero_copy_only=False),
            "propensity": col["propensity"].to_numpy(zero_copy_only=False),
            "candidate_ids": ids, "k_valid": k_valid,
        }
        for name in ("click", "value"):
            if name in col:
                arrays[name] = col[name].to_numpy(zero_copy_only=False)
        try:
            return LoggedData(**arrays)
        except LogFormatError as exc:
            raise LogFormatError(exc.field, f"{exc.problem} (in the chunk starting at row {first_row})") from None

    def default_chunk_rows(self, budget_bytes: int = 64 << 20) -> int:
        """Rows per chunk so that one chunk's candidate features take about ``budget_bytes``."""
        return int(min(65536, max(256, budget_bytes // (4 * self.max_k * self.da))))

    def chunks(self, rows: int | None = None) -> Iterator[LoggedData]:
        """Yield the log in order as :class:`LoggedData` of up to ``rows`` rows each (default: sized by
        :meth:`default_chunk_rows`)."""
        rows = rows or self.default_chunk_rows()
        columns = [c for c in self._file.schema_arrow.names if c in STANDARD or is_reward_column(c)]
        first = 0
        for batch in self._file.iter_batches(batch_size=rows, columns=columns):
            if batch.num_rows:
                yield self._to_logged(batch, first)
                first += batch.num_rows

    def read_all(self) -> LoggedData:
        """The whole log in memory (small logs only)."""
        columns = [c for c in self._file.schema_arrow.names if c in STANDARD or is_reward_column(c)]
        table = self._file.read(columns=columns).combine_chunks()
        if table.num_rows == 0:
            raise LogFormatError("file", "the log is empty")
        return self._to_logged(pa.concat_batches(table.to_batches()), 0)

    def column(self, name: str, rows: int = 65536) -> Iterator[np.ndarray]:
        """Stream one column (e.g. an extra column) as numpy arrays."""
        if name not in self._file.schema_arrow.names:
            raise LogFormatError(name, "no such column in decisions.parquet")
        for batch in self._file.iter_batches(batch_size=rows, columns=[name]):
            yield batch.column(0).to_numpy(zero_copy_only=False)


class NpzLog:
    """A v1 ``.npz`` log behind the same ``chunks`` interface (read whole; it has no chunked layout)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._data = read_logs(self.path)
        self.n_rows = len(self._data)
        self.segment_names = self._data.segment_names
        self.max_k = self._data.k
        self.reward = "reward"
        self.extra_columns: list[str] = []

    def default_chunk_rows(self, budget_bytes: int = 64 << 20) -> int:
        return self.n_rows

    def chunks(self, rows: int | None = None) -> Iterator[LoggedData]:
        rows = rows or self.n_rows
        for start in range(0, self.n_rows, rows):
            yield self._data.take(np.arange(start, min(start + rows, self.n_rows)))

    def read_all(self) -> LoggedData:
        return self._data


def open_log(path: str | os.PathLike[str], reward: str | None = None) -> LogReader | NpzLog:
    """A v2 directory (``LogReader``) or a v1 ``.npz`` file (``NpzLog``; only its ``reward`` column)."""
    path = Path(path)
    if path.is_dir():
        return LogReader(path, reward=reward)
    if not path.exists():
        raise FileNotFoundError(f"no log at {path}")
    if reward not in (None, "reward"):
        raise LogFormatError(reward, "a v1 .npz log has only its reward column")
    return NpzLog(path)
