"""Errors every layer may raise and the CLI turns into one line (exit 2).

A module of its own at the bottom of the import graph: the runtime, the engines and their
backends all raise :class:`StartupError`, and none should import another for it.
"""

from __future__ import annotations


class StartupError(RuntimeError):
    """Something a run needs did not come up (the Prefect API, Ray, the store, an engine).

    The message is one line: what failed and what to do. ``hare`` prints it and exits 2.
    """
