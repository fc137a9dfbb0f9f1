"""The JSON every bench can write with --json, which bench_all.py turns into the README's results.

A record: {"bench", "title", "commit", "date", "cores", ...}; quality benches add "columns",
"labels" and "rows" (per-seed figures per arm), the others a ready "markdown" table.
"""

import datetime
import json
import os
import subprocess


def provenance():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    # The machine's state with the figures: the 1-minute load average when the bench ends (a
    # timing's neighbours show there; this machine is shared).
    load = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    return {"commit": commit, "date": datetime.date.today().isoformat(), "cores": os.cpu_count(), "load_at_end": load}


def write_results(path, bench, title, **fields):
    """Write one bench's figures to `path` (nothing when `path` is None)."""
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"bench": bench, "title": title, **provenance(), **fields}, handle, indent=1)
