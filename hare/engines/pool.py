"""Dispatch partitions to whichever engine actor has a free slot (a work queue, not round-robin).

Why: partitions differ in length (a code partition that loops to ``max_tokens`` can take several
times longer than a short-answer one). Round-robin would queue work behind a slow engine while
another sits idle; here every engine keeps ``slots`` partitions in flight (one generating, the
next one ready so its continuous batch refills at once), and as soon as any partition finishes,
the next queued partition goes to the engine that freed the slot.

The queue knows nothing of Prefect or Ray: ``submit`` starts a partition on an engine and
returns a handle, ``wait_any`` blocks until one of the handles is done and returns it. The flow
passes Prefect task submission and ``ray.wait``; the unit tests pass plain functions.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, Generic, Iterable, Iterator, TypeVar

F = TypeVar("F")


@dataclass
class Dispatched(Generic[F]):
    partition_id: str
    engine: str
    handle: F


class EngineQueue(Generic[F]):
    """Feed partitions to ``engines``, at most ``slots`` in flight on each, first free first."""

    def __init__(self, engines: list[str], slots: int) -> None:
        if not engines or slots < 1:
            raise ValueError("an engine queue needs at least one engine and one slot per engine")
        self.engines, self.slots = list(engines), slots
        self.load = {e: 0 for e in self.engines}
        self.queued: deque[str] = deque()
        self.retired: list[str] = []

    def retire(self, engine: str, partition_id: str) -> bool:
        """Take an engine that keeps failing out of the pool and queue its partition again for
        the others; False (nothing changes) when it is the last engine."""
        if engine not in self.engines or len(self.engines) == 1:
            return False
        self.engines.remove(engine)
        self.retired.append(engine)
        self.queued.append(partition_id)
        return True

    def _free_engine(self) -> str | None:
        engine = min(self.engines, key=lambda e: self.load[e])  # ties: the first engine listed
        return engine if self.load[engine] < self.slots else None

    def run(
        self,
        partition_ids: Iterable[str],
        submit: Callable[[str, str], F],
        wait_any: Callable[[list[F]], F],
    ) -> Iterator[Dispatched[F]]:
        """Yield each partition's dispatch record as it finishes (completion order); the caller
        may :meth:`retire` the engine of a finished one, which then goes to another engine."""
        self.queued.extend(partition_ids)
        running: list[Dispatched[F]] = []
        while self.queued or running:
            while self.queued and (engine := self._free_engine()) is not None:
                pid = self.queued.popleft()
                running.append(Dispatched(pid, engine, submit(pid, engine)))
                self.load[engine] += 1
            done = wait_any([d.handle for d in running])
            index = next(i for i, d in enumerate(running) if d.handle is done)
            finished = running.pop(index)
            if finished.engine in self.load:
                self.load[finished.engine] -= 1
            yield finished
