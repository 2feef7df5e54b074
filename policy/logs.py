"""The logged-bandit data layout: what the trainer reads, and what users bring from their own systems.

This is layout v1 (one ``.npz``, every candidate's features on every row). Large or real logs use log
format v2 (Parquet decisions + an item table, read in chunks as ``LoggedData``): see :mod:`policy.logformat`.

A log is one ``.npz`` file (``numpy.savez``) holding these arrays; N rows (one per logged decision),
S segments, K candidates per decision, dx context and da candidate features:

================  ==================  =========================================================
key               dtype, shape        meaning
================  ==================  =========================================================
schema_version    integer, scalar     must be 1
segment           integer [N]         index into ``segment_names``, in [0, S)
segment_names     unicode str [S]     distinct, non-empty names (e.g. ``"m03-c11"``)
context           float [N, dx]       user/request features, finite
candidates        float [N, K, da]    features of the K candidates offered, finite
action            integer [N]         the candidate shown, in [0, K)
reward            float [N]           observed reward of the shown candidate, finite
propensity        float [N]           probability the logging policy gave ``action``, in (0, 1]
click             float [N], optional 0 or 1
value             float [N], optional purchase value (0 when none), finite
candidate_ids     integer [N, K],     optional identity of each offered candidate (e.g. a hashed
                  optional            ``ad_id``); -1 = no identity (and every padding slot)
k_valid           integer [N],        optional number of real candidates in the row, in [1, K]:
                  optional            slots ``>= k_valid`` are padding, never offered or chosen
================  ==================  =========================================================

Integer columns may use any signed or unsigned integer dtype (read as int64); float columns may be
float32 or float64 (``context`` and ``candidates`` keep float32, other columns are read as float64;
integer or boolean values are accepted for the float columns and converted). Any other key is
rejected, so a misspelt optional column (``"clicks"``) cannot be dropped silently. Every problem
raises :class:`policy.exceptions.LogFormatError` naming the field.

Writing one by hand (uniform logging over K = 3 candidates, so propensity 1/3)::

    import numpy as np
    np.savez(
        "my_logs.npz",
        schema_version=1,
        segment=np.array([0, 1, 0]),
        segment_names=np.array(["mobile-new", "desktop-loyal"]),
        context=np.random.rand(3, 4),          # N=3 decisions, dx=4
        candidates=np.random.rand(3, 3, 2),    # K=3 candidates, da=2
        action=np.array([2, 0, 1]),
        reward=np.array([1.0, 0.0, 0.0]),
        propensity=np.full(3, 1 / 3),
    )
    data = read_logs("my_logs.npz")

The propensity makes off-policy estimates (inverse propensity scoring) possible, as in the Open Bandit
Dataset (Saito et al., NeurIPS 2021, CC BY 4.0), whose logs record the behaviour policy's propensity per row.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from policy.exceptions import LogFormatError

SCHEMA_VERSION = 1
REQUIRED_KEYS = (
    "schema_version",
    "segment",
    "segment_names",
    "context",
    "candidates",
    "action",
    "reward",
    "propensity",
)
OPTIONAL_KEYS = ("click", "value")
OPTIONAL_INT_KEYS = ("candidate_ids", "k_valid")


@dataclass(frozen=True, eq=False)
class LoggedData:
    """Validated logged bandit feedback (see the module docstring for the layout).

    The constructor checks and normalises its arguments (int64 indices, float64 columns, a tuple of
    names) and raises :class:`LogFormatError` on any violation, so a ``LoggedData`` is always valid.
    """

    segment: np.ndarray
    """int64[N], index into ``segment_names``."""
    segment_names: tuple[str, ...]
    """S distinct segment names."""
    context: np.ndarray
    """float[N, dx] (float32 or float64)."""
    candidates: np.ndarray
    """float[N, K, da] (float32 or float64)."""
    action: np.ndarray
    """int64[N] in [0, K)."""
    reward: np.ndarray
    """float64[N], finite."""
    propensity: np.ndarray
    """float64[N] in (0, 1]."""
    click: np.ndarray | None = None
    """float64[N] of 0/1, or None."""
    value: np.ndarray | None = None
    """float64[N], or None."""
    candidate_ids: np.ndarray | None = None
    """int64[N, K] identity of each offered candidate (-1 = none), or None."""
    k_valid: np.ndarray | None = None
    """int64[N] real candidates per row (the rest is padding), or None (every row has K)."""

    def _columns(self) -> dict[str, Any]:
        """Every column as stored on the instance (optional ones only when present)."""
        keys = ("segment", "segment_names", "context", "candidates", "action", "reward", "propensity")
        out = {key: getattr(self, key) for key in keys}
        out.update({key: getattr(self, key) for key in OPTIONAL_KEYS + OPTIONAL_INT_KEYS
                    if getattr(self, key) is not None})
        return out

    def __post_init__(self) -> None:
        for key, checked in _validate(self._columns()).items():
            object.__setattr__(self, key, checked)

    # ------------------------------------------------------------------ shape
    def __len__(self) -> int:
        return int(self.segment.shape[0])

    @property
    def n_segments(self) -> int:
        return len(self.segment_names)

    @property
    def k(self) -> int:
        """Candidates per decision."""
        return int(self.candidates.shape[1])

    @property
    def dx(self) -> int:
        return int(self.context.shape[1])

    @property
    def da(self) -> int:
        return int(self.candidates.shape[2])

    # ------------------------------------------------------------------ selection
    def take(self, rows: np.ndarray) -> LoggedData:
        """The rows ``rows`` (int indices or a bool mask of length N), same ``segment_names``."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        return LoggedData(
            segment=self.segment[rows],
            segment_names=self.segment_names,
            context=self.context[rows],
            candidates=self.candidates[rows],
            action=self.action[rows],
            reward=self.reward[rows],
            propensity=self.propensity[rows],
            click=None if self.click is None else self.click[rows],
            value=None if self.value is None else self.value[rows],
            candidate_ids=None if self.candidate_ids is None else self.candidate_ids[rows],
            k_valid=None if self.k_valid is None else self.k_valid[rows],
        )

    def valid_k(self) -> np.ndarray:
        """int64[N] real candidates per row (``k_valid``, or K everywhere when the log has no padding)."""
        if self.k_valid is None:
            return np.full(len(self), self.k, dtype=np.int64)
        return self.k_valid

    def subset(self, segment_indices: Sequence[int] | np.ndarray) -> LoggedData:
        """The rows whose segment is in ``segment_indices`` (row order kept; indices and names unchanged).

        Raises ``LogFormatError`` when no row remains (a log must have at least one row).
        """
        wanted = np.asarray(segment_indices, dtype=np.int64)
        return self.take(np.isin(self.segment, wanted))

    def segment_rows(self) -> dict[int, np.ndarray]:
        """``{segment index: int64 row indices}`` for every segment that has rows."""
        order = np.argsort(self.segment, kind="stable")
        present, starts = np.unique(self.segment[order], return_index=True)
        bounds = list(starts[1:]) + [order.shape[0]]
        return {int(s): order[a:b] for s, a, b in zip(present, starts, bounds)}

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The arrays of the file layout (optional columns only when present)."""
        return {"schema_version": np.array(SCHEMA_VERSION, dtype=np.int64), **self._columns(),
                "segment_names": np.array(self.segment_names, dtype=str)}


def write_logs(path: str | os.PathLike[str], data: LoggedData, compress: bool = False) -> Path:
    """Write ``data`` to ``path`` exactly (no ``.npz`` is appended), atomically (temp file + rename).

    Returns the path written.
    """
    if not isinstance(data, LoggedData):
        raise TypeError(f"data must be LoggedData, got {type(data).__name__}")
    path = Path(path)
    save = np.savez_compressed if compress else np.savez
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            save(fh, **data.to_arrays())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def read_logs(path: str | os.PathLike[str]) -> LoggedData:
    """Read and check a log file. ``FileNotFoundError`` when absent; ``LogFormatError`` when malformed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no log file at {path}")
    # Open the file ourselves: np.load leaks the handle when a truncated archive fails to parse.
    with open(path, "rb") as handle:
        try:
            archive = np.load(handle, allow_pickle=False)
        except Exception as exc:  # numpy raises ValueError, OSError or zip/pickle errors here
            raise LogFormatError(
                "file", f"{path} is not an .npz archive of numpy arrays ({type(exc).__name__})"
            ) from None
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise LogFormatError("file", f"{path} holds a single array (.npy), not an .npz archive")
        with archive:
            arrays: dict[str, Any] = {}
            for key in archive.files:
                try:
                    arrays[key] = archive[key]
                except (ValueError, OSError, zipfile.BadZipFile) as exc:
                    raise LogFormatError(
                        key, f"cannot be read without pickle; store plain arrays (strings as np.array(names)) ({exc})"
                    ) from None
    return _from_file_arrays(arrays)


def _from_file_arrays(arrays: Mapping[str, Any]) -> LoggedData:
    unknown = sorted(set(arrays) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS) - set(OPTIONAL_INT_KEYS))
    if unknown:
        allowed = ", ".join(REQUIRED_KEYS + OPTIONAL_KEYS + OPTIONAL_INT_KEYS)
        raise LogFormatError(unknown[0], f"unknown key (allowed: {allowed})")
    for key in REQUIRED_KEYS:
        if key not in arrays:
            raise LogFormatError(key, "missing required key")
    version = np.asarray(arrays["schema_version"])
    if version.shape != () or version.dtype.kind not in "iu":
        raise LogFormatError("schema_version", f"must be an integer scalar, got {version.dtype} {version.shape}")
    if int(version) != SCHEMA_VERSION:
        raise LogFormatError("schema_version", f"unknown version {int(version)} (this reader knows {SCHEMA_VERSION})")
    names = np.asarray(arrays["segment_names"])
    if names.ndim != 1 or names.dtype.kind != "U":
        raise LogFormatError("segment_names", f"must be a 1-D unicode string array, got {names.dtype} {names.shape}")
    kwargs = {k: arrays[k] for k in REQUIRED_KEYS + OPTIONAL_KEYS + OPTIONAL_INT_KEYS
              if k in arrays and k != "schema_version"}
    kwargs["segment_names"] = tuple(str(s) for s in names)
    return LoggedData(**kwargs)


def _as_int(key: str, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu":
        raise LogFormatError(key, f"must have an integer dtype, got {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _as_float(key: str, value: Any, keep_float32: bool = False) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiub":
        raise LogFormatError(key, f"must have a float dtype, got {arr.dtype}")
    if arr.dtype.kind == "f" and arr.dtype.itemsize > 8:
        raise LogFormatError(key, f"must be float32 or float64, got {arr.dtype}")
    dtype = np.float32 if keep_float32 and arr.dtype == np.float32 else np.float64
    arr = np.ascontiguousarray(arr, dtype=dtype)
    bad = ~np.isfinite(arr)
    if bad.any():
        where = np.unravel_index(int(np.argmax(bad)), arr.shape) if arr.ndim else ()
        at = f" (first at row {where[0]})" if where else ""
        raise LogFormatError(key, f"has non-finite values (NaN or inf){at}")
    return arr


def _check_shape(key: str, arr: np.ndarray, shape: tuple[int | None, ...], spelled: str) -> None:
    ok = arr.ndim == len(shape) and all(want is None or got == want for got, want in zip(arr.shape, shape))
    if not ok:
        raise LogFormatError(key, f"must have shape {spelled}, got {arr.shape}")


def _validate(arrays: Mapping[str, Any]) -> dict[str, Any]:
    """Check the layout; return normalised arrays. Raises LogFormatError naming the first bad field."""
    out: dict[str, Any] = {}
    raw_names = arrays["segment_names"]
    if isinstance(raw_names, str):
        raise LogFormatError("segment_names", "must be a sequence of names, got a single string")
    names = tuple(raw_names.tolist() if isinstance(raw_names, np.ndarray) else raw_names)
    if not names:
        raise LogFormatError("segment_names", "must name at least one segment")
    if not all(isinstance(s, str) and s for s in names):
        raise LogFormatError("segment_names", "every name must be a non-empty string")
    if len(set(names)) != len(names):
        dup = next(s for s in names if names.count(s) > 1)
        raise LogFormatError("segment_names", f"names must be distinct ({dup!r} repeats)")
    out["segment_names"] = names

    segment = _as_int("segment", arrays["segment"])
    _check_shape("segment", segment, (None,), "[N]")
    n = segment.shape[0]
    if n == 0:
        raise LogFormatError("segment", "the log has no rows")
    if segment.min() < 0 or segment.max() >= len(names):
        raise LogFormatError("segment", f"indices must be in [0, {len(names)}), got {segment.min()}..{segment.max()}")
    out["segment"] = segment

    context = _as_float("context", arrays["context"], keep_float32=True)
    _check_shape("context", context, (n, None), f"[N={n}, dx]")
    if context.shape[1] == 0:
        raise LogFormatError("context", "needs at least one feature (dx >= 1)")
    out["context"] = context

    candidates = _as_float("candidates", arrays["candidates"], keep_float32=True)
    _check_shape("candidates", candidates, (n, None, None), f"[N={n}, K, da]")
    k = candidates.shape[1]
    if k == 0 or candidates.shape[2] == 0:
        raise LogFormatError("candidates", f"needs K >= 1 and da >= 1, got shape {candidates.shape}")
    out["candidates"] = candidates

    action = _as_int("action", arrays["action"])
    _check_shape("action", action, (n,), f"[N={n}]")
    if action.min() < 0 or action.max() >= k:
        row = int(np.argmax((action < 0) | (action >= k)))
        raise LogFormatError("action", f"must be in [0, K={k}); row {row} has {action[row]}")
    out["action"] = action

    for key in ("reward", "propensity") + OPTIONAL_KEYS:
        if key not in arrays or arrays[key] is None:
            continue
        col = _as_float(key, arrays[key])
        _check_shape(key, col, (n,), f"[N={n}]")
        out[key] = col

    if arrays.get("k_valid") is not None:
        k_valid = _as_int("k_valid", arrays["k_valid"])
        _check_shape("k_valid", k_valid, (n,), f"[N={n}]")
        bad = (k_valid < 1) | (k_valid > k)
        if bad.any():
            row = int(np.argmax(bad))
            raise LogFormatError("k_valid", f"must be in [1, K={k}]; row {row} has {k_valid[row]}")
        if np.any(action >= k_valid):
            row = int(np.argmax(action >= k_valid))
            raise LogFormatError("action", f"row {row} chose padding slot {action[row]} (k_valid {k_valid[row]})")
        out["k_valid"] = k_valid
    if arrays.get("candidate_ids") is not None:
        ids = _as_int("candidate_ids", arrays["candidate_ids"])
        _check_shape("candidate_ids", ids, (n, k), f"[N={n}, K={k}]")
        if ids.min() < -1:
            raise LogFormatError("candidate_ids", "ids must be >= 0, or -1 for none")
        out["candidate_ids"] = ids

    propensity = out["propensity"]
    bad = (propensity <= 0.0) | (propensity > 1.0)
    if bad.any():
        row = int(np.argmax(bad))
        raise LogFormatError("propensity", f"must be in (0, 1]; row {row} has {propensity[row]}")
    if "click" in out:
        click = out["click"]
        bad = (click != 0.0) & (click != 1.0)
        if bad.any():
            row = int(np.argmax(bad))
            raise LogFormatError("click", f"must be 0 or 1; row {row} has {click[row]}")
    return out
