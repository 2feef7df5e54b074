"""Writing v2 logs (layout in :mod:`policy.logformat`): decisions streamed in batches, items once."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from policy.exceptions import LogFormatError

DECISIONS = "decisions.parquet"
ITEMS = "items.parquet"
SIDECAR = "log.json"
REQUIRED = ("segment", "context", "candidate_ids", "action_id", "propensity")
BASE_REWARDS = ("reward", "click", "value")


def is_reward_column(name: str) -> bool:
    """``reward``, ``click``, ``value`` and ``reward_<name>`` are reward columns."""
    return name in BASE_REWARDS or (name.startswith("reward_") and len(name) > 7)


def _list_array(values: np.ndarray | Sequence[np.ndarray], k_valid: np.ndarray | None, dtype: pa.DataType) -> pa.Array:
    """A list<dtype> Arrow array from a 2-D array (rows cut at ``k_valid``) or a sequence of 1-D arrays."""
    if isinstance(values, np.ndarray) and values.ndim == 2:
        n, k = values.shape
        if k_valid is None:
            lengths = np.full(n, k, dtype=np.int64)
            flat = values.reshape(-1)
        else:
            lengths = np.asarray(k_valid, dtype=np.int64)
            flat = values[np.arange(k)[None, :] < lengths[:, None]]
    else:
        rows = [np.asarray(v) for v in values]
        lengths = np.array([r.shape[0] for r in rows], dtype=np.int64)
        flat = np.concatenate(rows) if rows else np.empty(0)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32 if lengths.sum() < 2**31 else np.int64)
    values_arr = pa.array(np.ascontiguousarray(flat).astype(dtype.to_pandas_dtype()), type=dtype)
    cls = pa.ListArray if offsets.dtype == np.int32 else pa.LargeListArray
    return cls.from_arrays(pa.array(offsets), values_arr)


def write_items(path: str | os.PathLike[str], item_id: np.ndarray, features: np.ndarray,
                valid_from: np.ndarray | None = None, extra: Mapping[str, Any] | None = None) -> Path:
    """Write an item table: ``item_id`` int[n], ``features`` float[n, da], optional ``valid_from``
    (datetime64 or tz-aware timestamps) and extra columns."""
    item_id = np.asarray(item_id, dtype=np.int64)
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or features.shape[0] != item_id.shape[0]:
        raise LogFormatError("features", f"must be [n_items={item_id.shape[0]}, da], got {features.shape}")
    cols: dict[str, pa.Array] = {"item_id": pa.array(item_id), "features": _list_array(features, None, pa.float32())}
    if valid_from is not None:
        cols["valid_from"] = pa.array(np.asarray(valid_from, dtype="datetime64[us]"), type=pa.timestamp("us", tz="UTC"))
    for name, values in (extra or {}).items():
        cols[name] = pa.array(values)
    path = Path(path)
    pq.write_table(pa.table(cols), path, compression="zstd")
    return path


class LogWriter:
    """Stream decisions into ``<dir>/decisions.parquet`` batch by batch; writes ``log.json`` on close.

    Parameters
    ----------
    directory
        The log directory (created; an existing ``decisions.parquet`` is replaced).
    source
        Free text recorded in ``log.json`` (where the data came from).
    row_group_rows
        Rows per Parquet row group (what a reader holds at once).

    Use as a context manager; :meth:`write_many` takes one batch of rows at a time and
    :meth:`write_items` the item table.
    """

    def __init__(self, directory: str | os.PathLike[str], source: str = "", row_group_rows: int = 65536) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.source = source
        self.row_group_rows = int(row_group_rows)
        self._writer: pq.ParquetWriter | None = None
        self._segments: dict[str, None] = {}
        self._rows = 0
        self._max_k = 0
        self._dx: int | None = None
        self._da: int | None = None
        self._tmp = self.directory / (DECISIONS + ".tmp")

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write_items(self, item_id: np.ndarray, features: np.ndarray, valid_from: np.ndarray | None = None,
                    extra: Mapping[str, Any] | None = None) -> None:
        write_items(self.directory / ITEMS, item_id, features, valid_from, extra)
        self._da = int(np.asarray(features).shape[1])

    def write_many(
        self,
        segment: Sequence[str] | np.ndarray,
        context: np.ndarray,
        candidate_ids: np.ndarray | Sequence[np.ndarray],
        action_id: np.ndarray,
        propensity: np.ndarray,
        rewards: Mapping[str, np.ndarray],
        timestamp: np.ndarray | None = None,
        k_valid: np.ndarray | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Append rows. ``candidate_ids`` is int[n, K] (cut at ``k_valid`` when given) or n 1-D arrays."""
        context = np.asarray(context, dtype=np.float32)
        n = context.shape[0]
        if not rewards:
            raise LogFormatError("reward", "give at least one reward column")
        for name in rewards:
            if not is_reward_column(name):
                raise LogFormatError(name, "reward columns are reward, click, value or reward_<name>")
        seg = np.asarray(segment).astype(str)
        cols: dict[str, pa.Array] = {"segment": pa.array(seg, type=pa.string()).dictionary_encode()}
        if timestamp is not None:
            cols["timestamp"] = pa.array(np.asarray(timestamp, dtype="datetime64[us]"), type=pa.timestamp("us", tz="UTC"))
        cols["context"] = _list_array(context, None, pa.float32())
        ids = _list_array(candidate_ids, k_valid, pa.int64())
        cols["candidate_ids"] = ids
        cols["action_id"] = pa.array(np.asarray(action_id, dtype=np.int64))
        cols["propensity"] = pa.array(np.asarray(propensity, dtype=np.float64))
        for name, values in rewards.items():
            cols[name] = pa.array(np.asarray(values, dtype=np.float64))
        for name, values in (extra or {}).items():
            if name in cols:
                raise LogFormatError(name, "extra column clashes with a standard column")
            cols[name] = pa.array(values)
        table = pa.table(cols)
        if any(len(c) != n for c in table.columns):
            raise LogFormatError("file", f"columns of a batch must all have {n} rows")
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._tmp, table.schema, compression="zstd")
        elif not table.schema.equals(self._writer.schema, check_metadata=False):
            raise LogFormatError("file", "every batch must have the same columns and types")
        self._writer.write_table(table, row_group_size=self.row_group_rows)
        for s in dict.fromkeys(seg.tolist()):
            self._segments.setdefault(s, None)
        self._rows += n
        lengths = ids.value_lengths().to_numpy() if hasattr(ids, "value_lengths") else None
        self._max_k = max(self._max_k, int(lengths.max()) if lengths is not None and n else 0)
        self._dx = context.shape[1]

    def close(self) -> Path:
        """Finish the file and write ``log.json``; returns the directory."""
        if self._writer is None:
            raise LogFormatError("file", "no rows were written")
        self._writer.close()
        self._writer = None
        os.replace(self._tmp, self.directory / DECISIONS)
        meta = {"format": "metacart-log", "version": 2, "rows": self._rows, "segments": list(self._segments),
                "max_k": self._max_k, "dx": self._dx, "da": self._da, "source": self.source}
        (self.directory / SIDECAR).write_text(json.dumps(meta, indent=1))
        return self.directory

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._tmp.exists():
            self._tmp.unlink()
