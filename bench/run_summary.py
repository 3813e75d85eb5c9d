"""Summarize the throughput of finished runs from their manifests (the figures in docs/benchmarks.md).

    .venv/bin/python bench/run_summary.py --store .hare/store RUN_ID [RUN_ID ...]

Prints, per run: partitions, records, output tokens, median per-partition output tokens/s,
aggregate output tokens/s over generation time, and the flow's wall time from run.json.
"""

from __future__ import annotations

import argparse
import statistics
from datetime import datetime

from hare.store.runs import read_run
from hare.run.status import partition_rows
from hare.store import absolute_store_url, open_store


def summarize(store_url: str, run_id: str) -> dict[str, float]:
    store = open_store(absolute_store_url(store_url))
    info = read_run(store, run_id)
    rows = partition_rows(store, run_id)
    tokens = sum(r["output_tokens"] for r in rows)
    gen_s = sum(r["output_tokens"] / r["tokens_per_s"] for r in rows if r["tokens_per_s"])
    wall = (datetime.fromisoformat(info["finished_at"]) - datetime.fromisoformat(info["started_at"])).total_seconds()
    return {
        "partitions": len(rows),
        "records": sum(r["records"] for r in rows),
        "output_tokens": tokens,
        "median_partition_tok_s": statistics.median(r["tokens_per_s"] for r in rows),
        "aggregate_tok_s": tokens / gen_s if gen_s else 0.0,
        "flow_wall_s": wall,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default=".hare/store")
    p.add_argument("run_ids", nargs="+")
    args = p.parse_args()
    for run_id in args.run_ids:
        s = summarize(args.store, run_id)
        print(run_id, " ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in s.items()))


if __name__ == "__main__":
    main()
