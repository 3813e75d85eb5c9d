"""Where hare keeps local caches (converted models, vLLM/torch compile caches).

``HARE_CACHE_DIR`` wins; the Makefile points it inside the checkout so `make demo` and
`make test` share one converted model and never write outside the project.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    root = os.environ.get("HARE_CACHE_DIR") or os.path.join(Path.home(), ".cache", "hare")
    path = Path(root).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path
