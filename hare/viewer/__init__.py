"""``hare view [RUN] [--store URL] [--port N]``: a local web viewer of a store's runs.

Runs with their status and card figures; a run's partitions as they commit (the page refreshes
itself while the run goes); one partition's records at a time, filtered by kind, domain,
audience, style and outcome (kept, or rejected and why), searched by text; one record with its
prompt, template, model, seed and scores, and for a dropped one the rule, the benchmark item or
a link to the record it duplicates. Reads only (hare/viewer/data.py); pages in hare/viewer/app.py.
"""

from __future__ import annotations

import argparse
import logging

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``view`` command."""
    from hare.store import DEFAULT_STORE_URL

    v = subparsers.add_parser("view", help="browse a store's runs, records, rejects and lineage in a local web page")
    v.add_argument("run_id", nargs="?", help="open this run's page (default: the list of runs)")
    v.add_argument("--store", default=DEFAULT_STORE_URL, help=f"store URL (default {DEFAULT_STORE_URL}, or $HARE_STORE)")
    v.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")
    v.add_argument("--host", default=DEFAULT_HOST,
                   help="address to bind (default 127.0.0.1: this machine only; the viewer has no login)")
    v.set_defaults(fn=_cmd_view)


def _cmd_view(args: argparse.Namespace) -> int:
    import socket

    import uvicorn

    from hare.store import absolute_store_url
    from hare.viewer.app import create_app, url_host

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    url = absolute_store_url(args.store)
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))  # bound here, so --port 0 can say which port it got
    port = sock.getsockname()[1]
    path = f"/runs/{args.run_id}" if args.run_id else "/"
    print(f"hare view: {url} at http://{url_host(args.host)}:{port}{path} (Ctrl-C stops)", flush=True)
    # The app answers only requests addressed to this host and port (DNS rebinding defence).
    config = uvicorn.Config(create_app(url, bound=(args.host, port)), log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
    return 0
