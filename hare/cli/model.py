"""``hare model push FOLDER s3://bucket/models/NAME/``: put a safetensors HF folder where every
engine node can fetch it (``model.source: s3://bucket/models/NAME/``), with its sha256 manifest.

The upload itself lives in :mod:`hare.engines.model_fetch` (beside the fetch that reads it back); this
module is only the command line: arguments in, one summary out.
"""

from __future__ import annotations

import argparse

from hare.engines.model_fetch import WORKERS


def _cmd_model_push(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hare.engines.model_fetch import push_folder

    result = push_folder(Path(args.folder), args.url, workers=args.workers)
    print(f"pushed {result.files} files ({result.bytes / 1e6:.1f} MB) to {result.url}/\n"
          f"revision: {result.revision}\n"
          f"model.source: {result.url}/")
    return 0


def add_model_push_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``push`` to the ``hare model`` subcommands (``subparsers``: what
    ``model.add_subparsers()`` returned)."""
    push = subparsers.add_parser(
        "push", help="upload a safetensors HF folder and its sha256 manifest (hare-manifest.json) to s3://",
        description="Upload every file of FOLDER under URL, then hare-manifest.json (each file's path, size and "
                    "sha256; written last). Engines given model.source: URL fetch it once per node into their "
                    "own cache and check every file against it; the manifest's digest is the model revision.")
    push.add_argument("folder", help="a Hugging Face model folder with config.json and .safetensors weights")
    push.add_argument("url", help="where it goes: s3://bucket/models/NAME/ (endpoint and credentials from the "
                                  "environment, as for the store)")
    push.add_argument("--workers", type=int, default=WORKERS, help=f"files uploaded at once (default {WORKERS})")
    push.set_defaults(fn=_cmd_model_push)
    return push
