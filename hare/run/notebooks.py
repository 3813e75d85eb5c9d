"""Execute a notebook end to end (nbclient), as `make notebook` and the tests do.

    python -m hare.run.notebooks notebooks/diversity.ipynb out/diversity.ipynb
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def execute_notebook(src: Path, dst: Path | None = None, timeout: int = 600) -> nbformat.NotebookNode:
    """Run every cell in the notebook's folder; raise on the first failing cell."""
    nb = nbformat.read(src, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(Path(src).resolve().parent)}}).execute()
    if dst is not None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, dst)
    return nb


if __name__ == "__main__":
    execute_notebook(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None)
