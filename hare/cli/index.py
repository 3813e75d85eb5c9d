"""``hare index``: the store's dedup index (retrain the IVF quantizer, show what it holds)."""

from __future__ import annotations

import argparse
import json


def _cmd_retrain(args: argparse.Namespace) -> int:
    from hare.config import DedupConfig, load_section
    from hare.stages.dedup.index import retrain
    from hare.store import absolute_store_url, open_store

    cfg = load_section(args.config, "dedup", DedupConfig) if args.config else DedupConfig()
    print(json.dumps(retrain(open_store(absolute_store_url(args.store)), cfg, args.nlist), indent=2))
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from hare.stages.dedup.index import load_quantizer, published_records, published_runs
    from hare.store.layout import minhash_params_key
    from hare.store import KeyNotFound, absolute_store_url, open_store

    store = open_store(absolute_store_url(args.store))
    try:
        minhash = json.loads(store.get_bytes(minhash_params_key()))
    except KeyNotFound:
        minhash = None
    q = load_quantizer(store)
    print(json.dumps({"runs": published_runs(store), "records": published_records(store), "minhash": minhash,
                      "ivf": {"version": q.version, "nlist": int(q.centroids.shape[0]), "groups": q.group_count}
                      if q else None}, indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    ix = subparsers.add_parser("index", help="the store's dedup index")
    isub = ix.add_subparsers(dest="index_command", required=True)
    show = isub.add_parser("show", help="published runs, records, MinHash layout and IVF version")
    show.add_argument("--store", required=True, help="store URL or folder")
    show.set_defaults(fn=_cmd_show)
    rt = isub.add_parser("retrain", help="train a new IVF quantizer on everything published and move every "
                                         "published vector into its lists (recorded in lineage)")
    rt.add_argument("--store", required=True, help="store URL or folder")
    rt.add_argument("--nlist", type=int, help="number of lists (default: about 4*sqrt(published records))")
    rt.add_argument("--config", help="YAML with a 'dedup:' section (index_groups, flat_max)")
    rt.set_defaults(fn=_cmd_retrain)
