"""``hare verify RUN``: re-hash every object a run committed or published.

``hare status`` trusts a committed manifest with a size/existence check; this is the full check:
every output of every ``succeeded`` manifest (all stages) and every shard the dataset manifest
(``runs/<id>/dataset/_manifest.json``) lists is read and its sha256 compared, ``--workers`` at
a time. Exit 0 when everything matches, 3 when anything is missing, altered or unreadable.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field

from hare.store.layout import dataset_manifest_key
from hare.store.manifest import UNREADABLE, OutputRef, check_objects
from hare.store.manifest_index import load_manifests
from hare.store.runs import read_run
from hare.store import DEFAULT_STORE_URL, KeyNotFound, ObjectStore


@dataclass
class VerifyReport:
    run_id: str
    manifests: int = 0  # succeeded manifests whose outputs were checked
    uncommitted: int = 0  # manifests that are not a commit (failed), not checked
    shards: int = 0
    objects: int = 0
    bytes: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)  # (key, what is wrong)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_run(store: ObjectStore, run_id: str, workers: int = 16) -> VerifyReport:
    """Re-hash (in parallel) every output of the run's committed manifests and its dataset shards."""
    info = read_run(store, run_id)
    report = VerifyReport(run_id)
    refs: list[OutputRef] = []
    for key, m in load_manifests(store, run_id, workers=workers).items():
        if m.status == "succeeded":
            report.manifests += 1
            refs.extend(m.outputs)
        elif (m.error or "").startswith(UNREADABLE):
            report.problems.append((key, m.error or ""))
        else:
            report.uncommitted += 1
    try:
        body = json.loads(store.get_bytes(dataset_manifest_key(run_id)))
        shards = [OutputRef(**s) for s in body["shards"]]
    except KeyNotFound:
        shards = []
        if info.get("status") == "succeeded":
            report.problems.append((dataset_manifest_key(run_id), "run.json says succeeded but no dataset manifest"))
    except (ValueError, TypeError, KeyError) as exc:
        shards = []
        report.problems.append((dataset_manifest_key(run_id), f"unreadable dataset manifest: {exc}"))
    report.shards = len(shards)
    refs.extend(shards)
    for ref, problem in zip(refs, check_objects(store, refs, deep=True, workers=workers)):
        report.objects += 1
        report.bytes += ref.bytes
        if problem is not None:
            report.problems.append((ref.key, problem))
    return report


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def print_report(report: VerifyReport, store: ObjectStore) -> None:
    print(f"run {report.run_id} in {store.url}: {report.objects} objects, {_human(report.bytes)} re-hashed "
          f"({report.manifests} committed manifests, {report.shards} dataset shards"
          f"{f', {report.uncommitted} uncommitted manifest(s) not checked' if report.uncommitted else ''})")
    if report.ok:
        print("all objects match their sha256")
        return
    print(f"{len(report.problems)} problem(s):")
    for key, problem in report.problems:
        print(f"  {problem}" if key in problem else f"  {key}: {problem}")
    print(f"redo the altered partitions with: hare rerun {report.run_id} --store {store.url}")


def _cmd_verify(args: argparse.Namespace) -> int:
    from hare.store import absolute_store_url, open_store

    store = open_store(absolute_store_url(args.store))
    report = verify_run(store, args.run_id, workers=args.workers)
    print_report(report, store)
    return 0 if report.ok else 3


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``hare verify RUN [--store URL] [--workers N]``."""
    p = subparsers.add_parser("verify", help="re-hash every committed object and dataset shard of a run (exit 3 on a mismatch)")
    p.add_argument("run_id")
    p.add_argument("--store", default=DEFAULT_STORE_URL, help=f"store URL (default {DEFAULT_STORE_URL}, or $HARE_STORE)")
    p.add_argument("--workers", type=int, default=16, help="objects read and hashed at once (memory: this many objects)")
    p.set_defaults(fn=_cmd_verify)
