"""The soak's figures, from what it reads off each worker: its ``/proc`` status, its Prometheus text and its
data directory. Pure functions of those texts and of the samples, so that each is tested without a worker
(``tests/unit/bench/test_soak_bench.py``); ``metacart.bench.soak`` runs the workers and takes the samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np


ENGINE_GAUGES = ("retention_open_actions", "retention_actions_cached", "retention_actions_read_back",
                 "retention_closed_ids", "retention_budget_records", "retention_pauses", "retention_pause_wait_s",
                 "retention_pause_changelog_pending", "retention_blocks", "retention_blocks_written",
                 "retention_blocks_deleted", "retention_block_bytes_written", "retention_segments_cached",
                 "retention_block_bytes", "retention_block_live_bytes",
                 "retention_block_index_keys",
                 "retention_segments_evicted", "segments_evicted", "retention_segments_expired",
                 "segments_expired")



def rss_mb(status_text: str) -> float | None:
    """Resident set size in MB from the text of ``/proc/PID/status`` (None when it has no ``VmRSS``)."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            parts = line.split()
            return int(parts[1]) * 1024 / 1e6 if parts[2].lower() == "kb" else int(parts[1]) / 1e6
    return None



def metrics_values(text: str) -> dict[str, float]:
    """The worker's gauges and counters a sample needs, from its Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {"dead_letters": 0.0}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            agent = s.labels.get("agent", "")
            if s.name == "metacart_state_bytes":
                out["state_bytes"] = s.value
            elif s.name == "metacart_segments_in_state":
                out[f"segments_{agent}"] = s.value
            elif s.name == "metacart_users_in_state":
                out["users_retention"] = s.value
            elif s.name == "metacart_open_decisions":
                out["open_decisions"] = out.get("open_decisions", 0.0) + s.value
            elif s.name == "metacart_dead_letters_total":
                out["dead_letters"] += s.value
            elif s.name == "process_cpu_seconds_total":
                out["process_cpu_s"] = s.value
            elif s.name.startswith("metacart_gc_pause_seconds"):
                generation = s.labels.get("generation", "")
                if s.name.endswith("_count"):
                    out[f"gc_pauses_{generation}"] = s.value
                elif s.name.endswith("_sum"):
                    out[f"gc_pause_s_{generation}"] = s.value
                elif s.name.endswith("_bucket") and float(s.labels.get("le", "nan")) == 0.05:
                    out[f"gc_pauses_le_50ms_{generation}"] = s.value
            elif s.name == "metacart_engine_counter" and (s.labels.get("name") in ENGINE_GAUGES
                                                          or s.labels.get("name", "").startswith("retention_rocksdb_")):
                out[s.labels["name"]] = s.value
    return out



def summary(samples: list[dict], warm_up_samples: int = 1) -> dict:
    """What a reader checks first: alive throughout, RSS and p99 after warm-up (first, last, max), growth."""
    if not samples:
        return {"samples": 0}
    steady = samples[warm_up_samples:] or samples

    def series(key: str) -> list[float]:
        return [s[key] for s in steady if s.get(key) is not None]

    rss, p99 = series("rss_mb"), series("p99_ms")
    cpu: dict[str, list[float]] = {}
    gc_over, gc_seconds = 0.0, 0.0
    for sample in steady:
        for name, pct in (sample.get("cpu_pct_by_worker") or {}).items():
            cpu.setdefault(name, []).append(pct)
        for figures in (sample.get("gc_by_worker") or {}).values():
            gc_over += figures["over_50ms"]
            gc_seconds += figures["seconds"]
    return {
        "samples": len(samples),
        "alive_throughout": all(s["alive"] for s in samples),
        "rss_mb_first_after_warm_up": rss[0] if rss else None,
        "rss_mb_last": rss[-1] if rss else None,
        "rss_mb_max": max(rss) if rss else None,
        "rss_growth_mb_per_min": _slope_per_min(steady, "rss_mb"),
        "p99_ms_max_after_warm_up": max(p99) if p99 else None,
        "p99_ms_median_after_warm_up": float(np.median(p99)) if p99 else None,
        "segments_ads_last": samples[-1].get("segments_ads"),
        "users_retention_last": samples[-1].get("users_retention"),
        "state_mb_last": samples[-1].get("state_mb"),
        "dead_letters_last": samples[-1].get("dead_letters"),
        "cpu_pct_median_by_worker": {k: float(np.median(v)) for k, v in sorted(cpu.items())} or None,
        "gc_pauses_over_50ms_after_warm_up": gc_over,
        "gc_pause_s_after_warm_up": round(gc_seconds, 3),
    }



def _slope_per_min(samples: list[dict], key: str) -> float | None:
    pts = [(s["t_s"], s[key]) for s in samples if s.get(key) is not None]
    if len(pts) < 2:
        return None
    t, y = np.array(pts).T
    return round(float(np.polyfit(t / 60.0, y, 1)[0]), 3)



def merged(parts: list[dict[str, float] | None], digits: int | None = None) -> dict[str, float] | None:
    """Per-worker figures summed key by key (each agent reports its own; shared keys add up)."""
    out: dict[str, float] = {}
    for part in parts:
        for k, v in (part or {}).items():
            out[k] = out.get(k, 0.0) + v
    return {k: v if digits is None else round(v, digits) for k, v in sorted(out.items())} or None



def interval_figures(now: dict[str, float], before: dict[str, float], seconds: float
                     ) -> tuple[float | None, dict[str, float] | None]:
    """A worker's CPU (% of a core) and collector pauses between two of its scrapes ``seconds`` apart."""
    def delta(key: str) -> float:
        return now.get(key, 0.0) - before.get(key, 0.0)

    cpu = round(100.0 * delta("process_cpu_s") / seconds, 1) if "process_cpu_s" in now and before else None
    if not any(k.startswith("gc_pauses_") for k in now):
        return cpu, None
    gens = ("0", "1", "2")
    gc_figures = {"pauses": sum(delta(f"gc_pauses_{g}") for g in gens), "full": delta("gc_pauses_2"),
                  "over_50ms": sum(delta(f"gc_pauses_{g}") - delta(f"gc_pauses_le_50ms_{g}") for g in gens),
                  "seconds": round(sum(delta(f"gc_pause_s_{g}") for g in gens), 4)}
    return cpu, gc_figures



def table_disk_mb(data_dir: Path) -> dict[str, float] | None:
    """MB on disk per table under ``data_dir``: the directories ``<table>-<partition>.db`` Faust's RocksDB store
    opens, summed over partitions (None when there are none yet)."""
    out: dict[str, float] = {}
    for db in Path(data_dir).rglob("*.db"):
        if not db.is_dir():
            continue
        table = db.name[:-3].rsplit("-", 1)[0]
        size = 0
        for f in db.rglob("*"):
            try:
                size += f.stat().st_size if f.is_file() else 0
            except OSError:  # compacted away meanwhile
                pass
        out[table] = out.get(table, 0.0) + size / 1e6
    return {k: round(v, 1) for k, v in sorted(out.items())} or None



def rocksdb_mb(m: dict[str, float]) -> dict[str, float] | None:
    """RocksDB memory in MB by ``<table>.<kind>`` (memtables, block_cache, readers), from the scraped counters."""
    prefix = "retention_rocksdb_"
    out = {}
    for key, value in sorted(m.items()):
        if key.startswith(prefix) and "_bytes:" in key:
            what, table = key[len(prefix):].split("_bytes:", 1)
            out[f"{table}.{what}"] = round(value / 1e6, 1)
    return out or None
