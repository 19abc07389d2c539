"""Memory of the dedup window: bytes per remembered event id at 10 M ids (48 h of input at
about 58 events/s per partition), and the lookup rate.

    .venv/bin/python bench/dedup_memory.py              # 10 M ids
    .venv/bin/python bench/dedup_memory.py --ids 1000000

Ids are fed in batches of 10,000 over 48 h of event time, as a source partition would;
the window's own arrays are counted (``DedupWindow.nbytes``) and the process's resident
memory is read before and after (ids are generated per batch, never held all at once).
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spendwatch.ingest.events import DedupWindow, id_keys

HORIZON = 48 * 3600
BATCH = 10_000


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=10_000_000)
    args = parser.parse_args()
    window = DedupWindow(HORIZON)
    t0 = 1_790_000_000.0
    step = HORIZON / args.ids
    start_rss = rss_mb()
    started = time.perf_counter()
    hashing = 0.0
    for lo in range(0, args.ids, BATCH):
        n = min(BATCH, args.ids - lo)
        ids = [f"evt-{i:012d}-a7f3" for i in range(lo, lo + n)]
        h0 = time.perf_counter()
        keys = id_keys(ids)
        hashing += time.perf_counter() - h0
        ts = t0 + (lo + np.arange(n, dtype=np.float64)) * step
        fresh, _, additions = window.check(ts, keys, np.ones(n, dtype=bool))
        assert fresh.all()
        window.commit(additions)
    seconds = time.perf_counter() - started
    end_rss = rss_mb()
    # Every id again: all must be found (the window still holds all 48 h).
    found = 0
    again = time.perf_counter()
    for lo in range(0, args.ids, BATCH * 10):
        n = min(BATCH * 10, args.ids - lo)
        keys = id_keys([f"evt-{i:012d}-a7f3" for i in range(lo, lo + n)])
        ts = t0 + (lo + np.arange(n, dtype=np.float64)) * step
        fresh, _, _ = window.check(ts, keys, np.ones(n, dtype=bool))
        found += int((~fresh).sum())
    lookup = time.perf_counter() - again
    result = {
        "ids": window.size,
        "buckets": len(window.buckets),
        "window_bytes": window.nbytes,
        "bytes_per_id": round(window.nbytes / window.size, 2),
        "rss_start_mb": round(start_rss, 1),
        "rss_end_mb": round(end_rss, 1),
        "rss_bytes_per_id": round((end_rss - start_rss) * 1024 * 1024 / window.size, 2),
        "insert_ids_per_s": round(args.ids / seconds),
        "hash_share": round(hashing / seconds, 2),
        "recheck_found": found,
        "recheck_ids_per_s": round(args.ids / lookup),
    }
    print(
        f"{result['ids']:,} ids in {result['buckets']} hourly buckets: "
        f"{result['bytes_per_id']} B/id in the window, {result['rss_bytes_per_id']} B/id of RSS; "
        f"{result['insert_ids_per_s']:,} ids/s inserted, {result['recheck_ids_per_s']:,} ids/s "
        "re-checked (all found)"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
