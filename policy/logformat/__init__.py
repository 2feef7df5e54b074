"""Log format v2: logged decisions as Parquet, candidate features in an item table, read in chunks.

This docstring is the format's one reference. A v2 log is a **directory** with two Parquet files and an
optional sidecar:

``decisions.parquet``: one row per logged decision

=================  =====================  ===========================================================
column             Arrow type             meaning
=================  =====================  ===========================================================
``segment``        string                 segment name (non-empty)
``timestamp``      timestamp (any unit;   when the decision was taken; optional, but needed when the
                   tz-aware, UTC)         item table is time-versioned
``context``        list<float32|float64>  user/request features, the same length ``dx`` on every row
``candidate_ids``  list<int64>            ids of the candidates offered, **any length** (>= 1) per row,
                                          in slot order; each id must be in the item table
``action_id``      int64                  the candidate shown; must be one of the row's candidate_ids
``propensity``     float64                probability the logging policy gave ``action_id``, in (0, 1]
reward columns     float64 (or int/bool)  ``reward``, ``click``, ``value`` and any ``reward_<name>``;
                                          at least one; ``click`` must be 0/1
anything else      any                    extra columns (``position``, ``k_valid``, ``user_id``, ...):
                                          kept as they are, never rejected
=================  =====================  ===========================================================

``items.parquet``: the candidates' features, keyed by id

=================  =====================  ===========================================================
``item_id``        int64                  the id used in ``candidate_ids`` / ``action_id``
``features``       list<float32|float64>  item features, the same length ``da`` on every row
``valid_from``     timestamp, optional    time versioning: a decision at time ``t`` uses the version
                                          with the latest ``valid_from <= t`` (ids may repeat then)
anything else      any                    kept (e.g. ``item_key``, the original string id)
=================  =====================  ===========================================================

``log.json`` (optional, written by :class:`~policy.logformat.writer.LogWriter`): ``{"format": "metacart-log",
"version": 2, "rows", "segments", "max_k", "dx", "da", "source"}``. Without it the reader scans the
``segment`` and ``candidate_ids`` columns once.

Readers (:class:`~policy.logformat.reader.LogReader`) stream row groups with ``pyarrow`` and yield
:class:`policy.logs.LoggedData` chunks padded to the log's largest candidate count with ``k_valid``
set (padding slots have id -1 and are never offered) and ``candidate_ids`` filled, so memory is bounded by
the chunk size whatever the number of rows. A malformed file raises
:class:`policy.exceptions.LogFormatError` naming the column (and the row). ``.npz`` logs of
:mod:`policy.logs` (v1) are read too (:func:`~policy.logformat.reader.open_log`).

A row costs bytes, not kilobytes: the Open Bandit Dataset sample stores 80 candidates' features on every
row in v1 layout; in v2 the row holds 80 ids (compressed, as they repeat) and the item table holds the
features once.
"""
