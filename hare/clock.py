"""The one timestamp format of manifests, leases, markers and reports (UTC, ISO 8601, ms).

A module of its own at the bottom of the import graph: the commit protocol, the quarantine and
the index all stamp what they write, and none of them should import another for a clock.
"""

from __future__ import annotations

from datetime import datetime, timezone


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
