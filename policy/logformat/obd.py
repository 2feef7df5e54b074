"""Importer for the Open Bandit Dataset's CSV layout into log format v2.

The Open Bandit Dataset (Saito, Aihara, Matsutani & Narita, "Open Bandit Dataset and Pipeline: Towards
Realistic and Reproducible Off-Policy Evaluation", NeurIPS 2021 Datasets and Benchmarks; ZOZO Research,
released under CC BY 4.0) logs a ZOZOTOWN recommendation widget: per row a ``timestamp``, the shown
``item_id``, its ``position`` (1..3), ``click``, the logging ``propensity_score``, hashed categorical
``user_feature_0..3`` and one ``user-item_affinity_<item>`` per item; ``item_context.csv`` holds
``item_feature_0`` (float) and hashed categorical ``item_feature_1..3``.

A campaign directory holds ``<campaign>.csv`` and ``item_context.csv``; a directory of campaign
directories (searched recursively, e.g. ``random/all`` and ``random/men``) imports them all into one
log. Mapping into v2:

- ``segment`` = ``"<behaviour policy>-<campaign>-pos<position>"`` (e.g. ``random-all-pos1``);
- ``context`` = one-hot user features (vocabulary: every value seen, over all files; the user features
  hash identically across the sample's files) followed by the user-item affinities, zero-padded to the
  largest campaign's item count;
- ``candidate_ids`` = every item of the row's campaign, as ``campaign_index * 1000 + item_id``, so
  campaigns of different sizes share one log (variable candidate counts);
- item ``features`` = ``[item_feature_0, one-hot(item_feature_1..3)]``. The categorical item features are
  hashed with a **per-file salt**, so the same category gets a different hash in another file: each
  file's categories get their own one-hot slots (no sharing across campaigns). ``item_key`` keeps
  ``"<campaign>/<item_id>"``;
- ``action_id`` from ``item_id``; ``propensity`` from ``propensity_score``; reward ``click``; ``position``
  and ``timestamp`` are kept.

The CSVs are streamed in blocks (two passes: the user-feature vocabulary, then the rows), so the full
data set (about 26M rows) imports in bounded memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from policy.exceptions import LogFormatError
from policy.logformat.writer import LogWriter

ID_STRIDE = 1000
USER_FEATURES = tuple(f"user_feature_{i}" for i in range(4))
ITEM_CATEGORICAL = tuple(f"item_feature_{i}" for i in (1, 2, 3))


def find_campaigns(root: str | os.PathLike[str]) -> list[Path]:
    """Campaign directories under ``root`` (``root`` itself when it is one), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no directory {root}")
    dirs = sorted({p.parent for p in root.rglob("item_context.csv")})
    found = [d for d in dirs if (d / f"{d.name}.csv").is_file()]
    if not found:
        raise LogFormatError("file", f"no Open Bandit Dataset campaign (<name>/<name>.csv + item_context.csv) under {root}")
    return found


def _read(path: Path, needed: tuple[str, ...]) -> pa.Table:
    try:
        table = pcsv.read_csv(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise LogFormatError("file", f"{path} is not a readable CSV ({exc})") from None
    for col in needed:
        if col not in table.column_names:
            raise LogFormatError(col, f"missing column in {path}")
    return table


def _stream(path: Path, needed: tuple[str, ...], columns: list[str] | None = None,
            block_bytes: int = 16 << 20) -> Iterator[pa.Table]:
    """The CSV in blocks of about ``block_bytes`` (bounded memory whatever the file's size)."""
    try:
        header = pcsv.open_csv(path, read_options=pcsv.ReadOptions(block_size=1 << 16)).schema.names
        reader = pcsv.open_csv(path, read_options=pcsv.ReadOptions(block_size=block_bytes),
                               convert_options=pcsv.ConvertOptions(include_columns=columns))
    except (pa.ArrowInvalid, OSError) as exc:
        raise LogFormatError("file", f"{path} is not a readable CSV ({exc})") from None
    for col in needed:
        if col not in header:
            raise LogFormatError(col, f"missing column in {path}")
    try:
        for batch in reader:
            yield pa.Table.from_batches([batch])
    except pa.ArrowInvalid as exc:
        raise LogFormatError("file", f"{path}: {exc}") from None


def _codes(column: pa.ChunkedArray, vocab: list[str], name: str) -> np.ndarray:
    """Index of every value in ``vocab`` (vectorised); an unknown or missing value names the column."""
    codes = pc.index_in(column.cast(pa.string()), value_set=pa.array(vocab, type=pa.string()))
    if codes.null_count:
        raise LogFormatError(name, "has missing values")
    return codes.to_numpy().astype(np.int64)


def import_obd(root: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Import every campaign under ``root`` into the v2 log directory ``out``; returns ``out``.

    Two streaming passes over each campaign's CSV (the user-feature vocabulary, then the rows), so memory
    stays bounded by the block size whatever the number of rows.
    """
    campaigns = find_campaigns(root)
    needed = ("timestamp", "item_id", "position", "click", "propensity_score") + USER_FEATURES
    item_tables = [_read(d / "item_context.csv", ("item_id", "item_feature_0") + ITEM_CATEGORICAL)
                   for d in campaigns]
    values: dict[str, set[str]] = {f: set() for f in USER_FEATURES}
    for d in campaigns:
        for block in _stream(d / f"{d.name}.csv", needed, columns=list(USER_FEATURES)):
            for f in USER_FEATURES:
                values[f].update(pc.unique(block.column(f).cast(pa.string())).to_pylist())
    vocab = {f: sorted(v for v in values[f] if v is not None) for f in USER_FEATURES}
    n_items = [t.num_rows for t in item_tables]
    max_items = max(n_items)

    # Items: per-file one-hot slots for the salted categorical features.
    item_vocab = [{f: sorted(set(t.column(f).cast(pa.string()).to_pylist())) for f in ITEM_CATEGORICAL}
                  for t in item_tables]
    widths = [sum(len(v[f]) for f in ITEM_CATEGORICAL) for v in item_vocab]
    da = 1 + sum(widths)
    ids, feats, keys = [], [], []
    for c, (d, t, v) in enumerate(zip(campaigns, item_tables, item_vocab)):
        f = np.zeros((t.num_rows, da), dtype=np.float32)
        f[:, 0] = t.column("item_feature_0").to_numpy()
        col = 1 + sum(widths[:c])
        for name in ITEM_CATEGORICAL:
            f[np.arange(t.num_rows), col + _codes(t.column(name), v[name], f"item_context.{name}")] = 1.0
            col += len(v[name])
        item_id = t.column("item_id").to_numpy().astype(np.int64)
        ids.append(c * ID_STRIDE + item_id)
        feats.append(f)
        keys += [f"{d.name}/{i}" for i in item_id]

    dx = sum(len(vocab[f]) for f in USER_FEATURES) + max_items
    with LogWriter(out, source="Open Bandit Dataset (ZOZO Research, CC BY 4.0): "
                   + ", ".join(str(d) for d in campaigns)) as writer:
        for c, d in enumerate(campaigns):
            behaviour = d.parent.name or "obd"
            for t in _stream(d / f"{d.name}.csv", needed):
                _write_block(writer, t, c, d, behaviour, vocab, dx, n_items[c], ids[c])
        writer.write_items(np.concatenate(ids), np.concatenate(feats), extra={"item_key": keys})
    return Path(out)


def _write_block(writer: LogWriter, t: pa.Table, c: int, d: Path, behaviour: str, vocab: dict[str, list[str]],
                 dx: int, n_items: int, item_ids: np.ndarray) -> None:
    n = t.num_rows
    x = np.zeros((n, dx), dtype=np.float32)
    col = 0
    for name in USER_FEATURES:
        x[np.arange(n), col + _codes(t.column(name), vocab[name], name)] = 1.0
        col += len(vocab[name])
    for j in range(n_items):
        name = f"user-item_affinity_{j}"
        if name in t.column_names:
            x[:, col + j] = t.column(name).to_numpy()
    shown = t.column("item_id").to_numpy().astype(np.int64)
    if np.any((shown < 0) | (shown >= ID_STRIDE)) or not np.isin(c * ID_STRIDE + shown, item_ids).all():
        raise LogFormatError("item_id", f"{d.name}.csv shows an item that item_context.csv lacks")
    position = t.column("position").to_numpy().astype(np.int64)
    seg = np.char.add(f"{behaviour}-{d.name}-pos", position.astype(str))
    ts = pc.cast(t.column("timestamp"), pa.timestamp("us", tz="UTC")).to_numpy().astype("datetime64[us]")
    writer.write_many(
        segment=seg, context=x, candidate_ids=np.tile(item_ids, (n, 1)),
        action_id=c * ID_STRIDE + shown, propensity=t.column("propensity_score").to_numpy(),
        rewards={"click": t.column("click").to_numpy().astype(np.float64)}, timestamp=ts,
        extra={"position": position},
    )
