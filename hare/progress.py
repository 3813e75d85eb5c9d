"""Progress for the long one-off commands: a bar or a step spinner, on stderr only.

Both helpers draw with rich on stderr, so stdout stays clean for piping, and draw nothing when
stderr is not a terminal (a log file, CI, a Ray worker).

- :func:`bar`: a bar over a known total; yields ``advance(n)``.
- :func:`status`: a spinner naming the current step; yields ``step(name)``.
- :func:`map_batches`: a function over consecutive slices of a sequence, with a bar.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, TypeVar

if TYPE_CHECKING:
    import numpy as np
    from rich.console import Console

R = TypeVar("R")


def _console() -> "Console":
    from rich.console import Console

    return Console(stderr=True)


@contextmanager
def bar(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr; the body calls ``advance(n)`` as work gets done."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    console = _console()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                  disable=not console.is_terminal) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


@contextmanager
def status(description: str) -> Iterator[Callable[[str], None]]:
    """A spinner on stderr; the body calls ``step(name)`` as it moves to the next step."""
    console = _console()
    if not console.is_terminal:
        yield lambda _name: None
        return
    with console.status(description) as live:
        yield lambda name: live.update(f"{description}: {name}")


def map_batches(fn: Callable[[Any], R], items: Sequence[Any], description: str, size: int = 1000) -> list[R]:
    """``fn`` over consecutive slices of ``items`` (a list, an Arrow table...), one result per slice."""
    out = []
    with bar(description, len(items)) as advance:
        for start in range(0, len(items), size):
            chunk = items[start:start + size]
            out.append(fn(chunk))
            advance(len(chunk))
    return out


def embed_in_batches(embed: Callable[[Sequence[str]], "np.ndarray"], texts: Sequence[str],
                     description: str = "embedding", size: int = 512) -> "np.ndarray":
    """``embed(texts)`` computed slice by slice under a progress bar."""
    import numpy as np

    if not len(texts):
        return embed(texts)
    return np.vstack(map_batches(embed, texts, description, size))
