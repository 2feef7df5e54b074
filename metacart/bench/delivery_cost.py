"""Cost of exactly-once: ``metacart.bench.stream.run`` twice in one process, delivery=exactly_once then at_least_once."""
import json

from metacart.bench.stream import run
from streams.settings import Settings

if __name__ == "__main__":
    rows = {}
    for mode in ("exactly_once", "at_least_once"):
        s = Settings()
        s.ads.delivery = mode
        s.agents = "ads"
        r = run(s, n=10000, load_rate=1000.0, load_s=10.0)
        rows[mode] = {k: r[k] for k in ("decisions_per_s", "p50_ms", "p99_ms", "ceiling_per_s", "ratio")}
    print(json.dumps(rows, indent=2))
