"""Flow ``synthesize``: the whole DAG of a run, top to bottom as in design.md.

    plan -> generate (one task a partition, on Ray, engines in actors)
         -> per partition, streamed as each commits: [cleanup -> validate ->] quality -> decontam -> features
         -> top-up rounds: partitions for the strata the stages emptied, generated and streamed alike
         -> stage reports -> dedup (global, over stored features) -> diversity -> publish

Flow ``rerun-failed`` takes only a run id: it reads the config from run.json and redoes what the
manifests say is missing, failed or altered, then the downstream stages.

Call :func:`run_synthesize` (what ``hare run`` does): it prepares the Prefect API and Ray,
then runs the flow. Re-running with the same ``run_id`` resumes: committed partitions are
skipped, the rest are generated, and the dataset is published once all are committed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import prefect.runtime as prefect_runtime
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact
from pydantic import ValidationError
from prefect_ray.context import remote_options

from hare import lineage
from hare.config import ConfigError, RunConfig, load_config
from hare.engine import CapacityError, start_engines, stop_engines
from hare.models import ModelSourceError
from hare.estimate import plan_and_estimate, plan_markdown, render_plan
from hare.layout import estimate_key, records_key, run_json, run_prefix
from hare.lease import Lease, hold_run
from hare.pool import EngineQueue
from hare.runs import finish_run, new_run_id, read_run
from hare.run_progress import terminal_view
from hare.runtime import HareRayTaskRunner, StartupError, check_store, driver_runtime, mark_flow_run_crashed
from hare.store import DEFAULT_STORE_URL, absolute_store_url, check_key_part, open_store
from hare.embedders import start_embedders, stop_embedders
from hare.manifest_index import load_manifests
from hare.dedup_index import decision_gate, hold_index
from hare.tasks.dedup import deduplicate
from hare.tasks.diversity import measure_diversity
from hare.tasks.generate import generate_partition
from hare.tasks.plan import check_resume_inputs, is_baseline, plan_run, plan_top_up, record_top_up_outcome
from hare.tasks.publish import publish
from hare.tasks.stages import records_source, run_stage, stage_names, streamed_stages


class RunIncomplete(RuntimeError):
    """Some partitions failed; the run can be resumed with the same run id."""


class RunInterrupted(RuntimeError):
    """The driver was interrupted (Ctrl-C); what was committed stays, `hare rerun` completes it."""


DEFAULT_CONFIG = os.environ.get("HARE_CONFIG", "configs/demo.yaml")


@flow(name="synthesize", task_runner=HareRayTaskRunner(), log_prints=True)
def synthesize(config_path: str = DEFAULT_CONFIG, run_id: str | None = None,
               store_url: str | None = None, allow_changed_inputs: bool = False) -> dict[str, Any]:
    """Plan, generate every uncommitted partition on Ray, and publish the dataset.

    Args:
        config_path: The run's YAML file (paths inside it are relative to it).
        run_id: Resume this run: only partitions that are not committed are redone. Empty: a new run.
        store_url: Override the config's store.url: a folder, file:///abs/path or s3://bucket/prefix.
        allow_changed_inputs: Resume even though an input file (topics, axes, templates, benchmarks)
            changed since the run started: what the change touches is redone, run.json records it.
    """
    cfg = load_config(config_path, store_url=store_url)
    return execute_run(cfg, run_id or run_id_of_flow_run(cfg), allow_changed_inputs)


def run_id_of_flow_run(cfg: RunConfig) -> str:
    """A run id derived from this flow run (its scheduled time and id), so that Prefect's retry
    of the same flow run (`prefect flow-run retry`, the UI's Retry) resumes the same hare run."""
    flow_run_id = prefect_runtime.flow_run.id
    scheduled = prefect_runtime.flow_run.scheduled_start_time
    if not flow_run_id or scheduled is None:
        return new_run_id(cfg)
    return new_run_id(cfg, when=scheduled, suffix=str(flow_run_id).replace("-", "")[:6])


@flow(name="rerun-failed", task_runner=HareRayTaskRunner(), log_prints=True)
def rerun_failed(run_id: str, store_url: str = DEFAULT_STORE_URL, allow_changed_inputs: bool = False) -> dict[str, Any]:
    """Redo only the partitions of a run that are missing, failed or whose objects no longer match
    their sha256, then the downstream stages, so the run's dataset is complete.

    Args:
        run_id: The run to complete (its run.json holds the config it was started with).
        store_url: The object store holding the run: a folder, file:///abs/path or s3://bucket/prefix.
        allow_changed_inputs: Complete it even though an input file changed since it started.
    """
    return execute_run(config_of_run(store_url, run_id), run_id, allow_changed_inputs)


def config_of_run(store_url: str, run_id: str) -> RunConfig:
    """The config a run was started with (from its run.json), pointed at the store it lives in."""
    store = open_store(absolute_store_url(store_url))
    info = read_run(store, run_id)
    try:
        return RunConfig.model_validate({**info["config"], "store": {"url": store.url}})
    except ValidationError as exc:  # e.g. a seed file moved since the run started
        raise ConfigError(f"run {run_id}: its config no longer validates: {exc}") from None


def execute_run(cfg: RunConfig, run_id: str, allow_changed_inputs: bool = False) -> dict[str, Any]:
    """The run under its run id's lease (hare/lease.py): the same run id started twice at once
    is refused with a message naming the holder; a crashed holder's lease expires."""
    store = open_store(cfg.store.url)
    with hold_run(store, run_id) as lease:
        if lease.previous is not None:
            _note_crashed_holder(lease.previous, run_id)
        return _execute_run(cfg, run_id, allow_changed_inputs)


def _note_crashed_holder(previous: Lease, run_id: str) -> None:
    """The run's last driver died holding its lease: say so, and end its Prefect flow run as
    Crashed (a SIGKILLed driver never does), so the UI does not show it Running forever."""
    logger = get_run_logger()
    logger.warning("run %s: taken over from %s, which ended without releasing it; committed partitions are kept",
                   run_id, previous.owner)
    old_flow_run = previous.holder.get("flow_run")
    if old_flow_run and old_flow_run != str(prefect_runtime.flow_run.id):
        mark_flow_run_crashed(old_flow_run, f"hare: the driver ({previous.owner}) died holding run {run_id}; "
                                            f"flow run {prefect_runtime.flow_run.id} took the run over")


def _execute_run(cfg: RunConfig, run_id: str, allow_changed_inputs: bool) -> dict[str, Any]:
    """The DAG for one run id; committed partitions and stages are skipped (the manifests say).

    plan -> generate each partition on the engines, and behind each one as it commits, its
    streamed stages (quality -> decontam -> features) on CPU workers -> the stage reports
    (merged aggregates) -> the global dedup decision over stored features -> diversity -> publish.
    """
    logger = get_run_logger()
    store = open_store(cfg.store.url)
    logger.info("run %s -> %s", run_id, store.uri(f"runs/{run_id}"))
    lineage.emit(store, run_id, "synthesize", "START", facets={"config_hash": cfg.config_hash()})

    partition_ids = plan_run(cfg, run_id, allow_changed_inputs)
    dataset_ids = [p for p in partition_ids if not is_baseline(p)]
    baseline_ids = [p for p in partition_ids if is_baseline(p)]
    _show_estimate(cfg, run_id, store)
    embedders = start_embedders(cfg, run_id)
    engines = EnginePool(cfg, run_id)
    try:
        try:
            streamed = _generate_and_stream(cfg, run_id, partition_ids, engines, last=not cfg.plan.top_up_rounds)
            dataset_ids += _top_up(cfg, run_id, dataset_ids, streamed, engines)  # strata the stages emptied
        except Exception as exc:  # engines could not start, Ray went away...: say so in run.json
            _fail(store, run_id, "failed", {"error": f"{type(exc).__name__}: {exc}"[:1000]})
            raise
        finally:
            engines.release()  # a top-up that ended early: the stages after it get the engines' CPUs/GPUs
        if streamed.failed:
            _fail(store, run_id, "incomplete", {"failed_partitions": sorted(streamed.failed),
                                                "failures": streamed.failed, "generation": streamed.generation})
            named = ", ".join(f"{pid} ({why.split(':', 1)[0]})" for pid, why in sorted(streamed.failed.items()))
            raise RunIncomplete(f"run {run_id}: {len(streamed.failed)} partition(s) failed: {named}; the others are "
                                f"committed; redo these with: hare rerun {run_id} --store {store.url}")
        try:
            write_stage_reports(store, cfg, run_id, dataset_ids)
            # one run at a time decides against the store's dedup index and publishes into it
            with hold_index(store, run_id, say=logger.info) if cfg.dedup.enabled else contextlib.nullcontext():
                if cfg.dedup.enabled:
                    deduplicate.submit(cfg, run_id, dataset_ids, records_source(cfg, "dedup")).result()
                    decision_gate(run_id)  # tests only: a no-op unless HARE_TEST_DECISION_GATE is set
                final = records_source(cfg, "publish")
                kept = by_partition(store, run_id)
                sizes = {p: kept[(p, final)].stats.get("records", 0) for p in dataset_ids}
                measure_diversity.submit(cfg, run_id, sizes, baseline_ids, final).result()
                totals = {**publish(cfg, run_id, dataset_ids, streamed.generation),
                          "generation": streamed.generation, "streaming": streamed.streaming}
        except Exception as exc:  # a global stage failed: its manifests say which partition; resume redoes it
            _fail(store, run_id, "failed", {"error": f"{type(exc).__name__}: {exc}"[:1000]})
            raise
    finally:
        stop_embedders(embedders)
    finish_run(store, run_id, "succeeded", totals)
    lineage.emit(store, run_id, "synthesize", "COMPLETE", facets={"totals": totals})
    return {"run_id": run_id, "store": store.url, "flow_run_id": str(prefect_runtime.flow_run.id), **totals}


def _top_up(cfg: RunConfig, run_id: str, dataset_ids: list[str], streamed: "Streamed",
            engines: "EnginePool") -> list[str]:
    """Bounded rounds (``plan.top_up_rounds``) of top-up partitions for the strata whose records
    the streamed stages removed, each round generated and streamed like the plan's partitions
    (tasks/plan.py: plan_top_up) on the engines the plan's partitions used (loaded once per
    run). Returns the ids added to the dataset's."""
    added: list[str] = []
    previous = dataset_ids
    for round_no in range(1, cfg.plan.top_up_rounds + 1):
        if streamed.failed:
            break
        new_ids = plan_top_up(cfg, run_id, round_no, previous, [*dataset_ids, *added])
        if not new_ids:
            break
        more = _generate_and_stream(cfg, run_id, new_ids, engines, last=round_no == cfg.plan.top_up_rounds)
        streamed.failed.update(more.failed)
        streamed.generation.setdefault("top_up", []).append({"round": round_no, **more.generation})
        if not more.failed:
            record_top_up_outcome(cfg, run_id, round_no, new_ids)
        added, previous = [*added, *new_ids], new_ids
    return added


def write_stage_reports(store: Any, cfg: RunConfig, run_id: str, dataset_ids: list[str]) -> None:
    """Each streamed stage's run report (quality.json, decontamination.json), merged from the
    aggregates its partition manifests hold: no record is read again."""
    import json

    manifests = by_partition(store, run_id)
    for stage in streamed_stages(cfg):
        if stage.report is None:
            continue
        aggregates = [manifests[(pid, stage.name)].stats["aggregate"] for pid in dataset_ids]
        report = stage.merge(aggregates)
        store.put_bytes(f"{run_prefix(run_id)}/{stage.report}", json.dumps(report, indent=2).encode())
        lineage.emit(store, run_id, f"synthesize.{stage.name}", "COMPLETE",
                     outputs=[lineage.dataset(store.uri(records_key(run_id, p, stage.name))) for p in dataset_ids],
                     facets={"stage": stage.name, "partitions": len(dataset_ids)})


def by_partition(store: Any, run_id: str) -> dict[tuple[str, str], Any]:
    """Every manifest of the run by (partition, stage): one listing, the manifest index, GETs
    only for what changed since the index was written (the index is refreshed here)."""
    return {(m.partition_id, m.stage): m for m in load_manifests(store, run_id, write_back=True).values()}


@dataclass
class Streamed:
    """What generation and the streamed stages left: failures by partition, the generation
    stage's throughput, and how much stage work finished while generation was still going."""

    failed: dict[str, str]
    generation: dict[str, Any]
    streaming: dict[str, Any]


class StageChain:
    """Each dataset partition's streamed stages, each submitted as its own Prefect task on Ray
    (with the resources its config section declares) as soon as the stage before it commits.
    A failure stops only that partition's chain."""

    def __init__(self, cfg: RunConfig, run_id: str) -> None:
        self.cfg, self.run_id = cfg, run_id
        self.stages = streamed_stages(cfg)
        self.running: list[tuple[Any, str, int]] = []   # (future, partition, stage index)
        self.failed: dict[str, str] = {}
        self.generating = True
        self.tasks = self.during_generation = 0

    def start(self, partition_id: str) -> None:
        self._submit(partition_id, 0)

    def _submit(self, partition_id: str, index: int) -> None:
        if index >= len(self.stages):
            return
        stage = self.stages[index]
        with remote_options(**getattr(self.cfg, stage.section).resources.ray_options()):
            future = run_stage.submit(self.cfg, self.run_id, partition_id, stage.name)
        self.running.append((future, partition_id, index))

    def futures(self) -> list[Any]:
        return [f for f, _, _ in self.running]

    def finished(self, future: Any) -> None:
        i = next(i for i, (f, _, _) in enumerate(self.running) if f is future)
        _, pid, index = self.running.pop(i)
        try:
            future.result()
        except Exception as exc:  # noqa: BLE001 - this partition stops here; the others go on
            self.failed[pid] = f"{self.stages[index].name}: {type(exc).__name__}: {exc}"[:300]
            return
        self.tasks += 1
        self.during_generation += int(self.generating)
        self._submit(pid, index + 1)

    def drain(self) -> None:
        self.generating = False
        while self.running:
            self.finished(_first_finished(self.futures()))


class EnginePool:
    """The run's engine actors: started by the first round that generates, kept for the top-up
    rounds after it (a model load is ~25 s on the CPU and minutes for a large model on a GPU),
    released when the last round's generation ends so the stages still running get their
    CPUs/GPUs. An engine that left the pool in one round is not used in the next."""

    def __init__(self, cfg: RunConfig, run_id: str) -> None:
        self.cfg, self.run_id = cfg, run_id
        self.handles: dict[str, Any] | None = None
        self.starts = 0

    def live(self) -> dict[str, Any]:
        if self.handles is None:
            self.handles = _start_engines(self.cfg, self.run_id)
            self.starts += 1
        return self.handles

    def retire(self, names: list[str]) -> None:
        for name in names:
            if self.handles is not None and name in self.handles:
                stop_engines({name: self.handles.pop(name)})

    def release(self) -> None:
        if self.handles is not None:
            stop_engines(self.handles)
            self.handles = None


def _generate_and_stream(cfg: RunConfig, run_id: str, partition_ids: list[str], pool: EnginePool,
                         last: bool = True) -> Streamed:
    """One generation task per partition, queued to the first engine with a free slot; behind
    each dataset partition that commits, its stage chain. While waiting for a generation to
    finish the driver serves stage completions, so stages advance as soon as they can. ``last``:
    no round of generation comes after this one, so the engines are released before the stages
    drain (otherwise they wait, loaded, for the next round)."""
    engines = pool.live()
    progress = RunProgress(run_id, len(partition_ids), list(engines), cfg.model.num_gpus)
    queue: EngineQueue[Any] = EngineQueue(list(engines), cfg.ray.partitions_in_flight_per_engine)
    chain = StageChain(cfg, run_id)
    outcomes: list[dict[str, Any]] = []

    def submit(pid: str, engine: str) -> Any:
        with remote_options(num_cpus=cfg.ray.task_num_cpus):
            return generate_partition.submit(cfg, run_id, pid, engine)

    def wait_generation(generating: list[Any]) -> Any:
        while True:
            done = _first_finished(generating + chain.futures())
            if any(done is g for g in generating):
                return done
            chain.finished(done)

    try:
        for done in queue.run(partition_ids, submit, wait_generation):
            outcome = _outcome(done.partition_id, done.handle)
            if outcome["status"] == "failed" and outcome["error"].startswith("EngineGone") and \
                    queue.retire(done.engine, done.partition_id):
                get_run_logger().warning("engine %s left the pool (%s); %s goes to another engine",
                                         done.engine, outcome["error"][:200], done.partition_id)
                continue
            outcomes.append(outcome)
            progress.update(outcomes)
            if outcome["status"] == "failed":
                chain.failed[done.partition_id] = f"generate: {outcome['error']}"
            elif not is_baseline(done.partition_id):
                chain.start(done.partition_id)
        generation = progress.totals(outcomes)
    except BaseException:
        pool.release()
        raise
    pool.retire(queue.retired)
    if last:
        pool.release()  # their CPUs/GPUs go to the stages still running
    generation["engine_starts"] = pool.starts
    chain.drain()
    if queue.retired:
        generation["engines_retired"] = queue.retired  # run.json says which engines left the pool
    return Streamed(chain.failed, generation,
                    {"stage_tasks": chain.tasks, "finished_while_generating": chain.during_generation})


def _show_estimate(cfg: RunConfig, run_id: str, store: Any) -> None:
    """The plan's cost estimate (``hare plan``) for this cluster, kept in ``plan/estimate.json``
    at the run's first start (a resume keeps it, so the card compares with what was expected)
    and shown on the flow run's page."""
    import json

    import ray

    key = estimate_key(run_id)
    if not store.exists(key):
        summary, est = plan_and_estimate(cfg, ray.cluster_resources().get("GPU") or None)
        store.put_bytes(key, json.dumps({"plan": summary, "estimate": est}, indent=2).encode())
    doc = json.loads(store.get_bytes(key))
    create_markdown_artifact(key="hare-plan", markdown=plan_markdown(doc["plan"], doc["estimate"]),
                             description=f"Run {run_id}: the plan and its estimated generation cost")


def _start_engines(cfg: RunConfig, run_id: str) -> dict[str, Any]:
    """The engine actors, or one line saying why the model could not be loaded."""
    try:
        return start_engines(cfg, run_id)
    except (CapacityError, ModelSourceError, StartupError):
        raise
    except Exception as exc:  # noqa: BLE001 - Ray wraps the actor's error; keep its last line
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise StartupError(f"engine: could not load model {cfg.model.name!r} from {cfg.model.source}: "
                           f"{(lines[-1] if lines else type(exc).__name__)[:300]}; check model.source, "
                           f"model.max_model_len and the engine's memory (model.env)") from None


def _first_finished(futures: list[Any]) -> Any:
    """Block until one of the Prefect-on-Ray futures is done (a failed task counts as done)."""
    import ray

    by_ref = {f.wrapped_future: f for f in futures}
    ready, _ = ray.wait(list(by_ref), num_returns=1)
    return by_ref[ready[0]]


def _fail(store: Any, run_id: str, status: str, summary: dict[str, Any]) -> None:
    finish_run(store, run_id, status, summary)
    lineage.emit(store, run_id, "synthesize", "FAIL", facets=summary)


def _outcome(partition_id: str, future: Any) -> dict[str, Any]:
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 - a failed partition is reported, the others go on
        return {"partition_id": partition_id, "status": "failed", "error": f"{type(exc).__name__}: {exc}"[:300],
                "stats": {}}


class RunProgress:
    """Prefect artifacts updated as partitions finish: a progress bar and a throughput table
    (totals, output tokens/s overall, per engine and per GPU, GPU busy fraction, ETA), visible
    in the flow run's UI page."""

    def __init__(self, run_id: str, partitions: int, engines: list[str], gpus_per_engine: float) -> None:
        self.run_id, self.partitions, self.engines = run_id, partitions, engines
        self.gpus = len(engines) * gpus_per_engine
        self.started = time.monotonic()
        self._seen = 0
        self._per_minute: dict[int, int] = {}
        self._partitions_per_minute: dict[int, int] = {}
        self.progress_id = create_progress_artifact(
            progress=0.0, key="hare-progress", description=f"Partitions of run {run_id} generated")

    def totals(self, outcomes: list[dict[str, Any]]) -> dict[str, Any]:
        """Wall-clock throughput of the stage so far (what run.json and the bench report); only
        partitions generated by this run count, not those skipped as already committed."""
        elapsed = time.monotonic() - self.started
        generated = [o for o in outcomes if o["status"] == "succeeded"]
        tokens = sum(o["stats"].get("output_tokens", 0) for o in generated)
        rate = tokens / elapsed if elapsed > 0 else 0.0
        out = {"partitions": len(outcomes), "generated": len(generated), "engines": len(self.engines), "gpus": self.gpus,
               "output_tokens": tokens, "wall_seconds": round(elapsed, 2), "output_tokens_per_s": round(rate, 2),
               "output_tokens_per_s_per_engine": round(rate / len(self.engines), 2)}
        if self.gpus:
            out["output_tokens_per_s_per_gpu"] = round(rate / self.gpus, 2)
            busy = [(o["stats"]["gpu_busy_fraction"], o["stats"].get("generate_seconds", 0.0))
                    for o in generated if "gpu_busy_fraction" in o["stats"]]
            weight = sum(w for _, w in busy)
            if weight:
                out["gpu_busy_fraction"] = round(sum(f * w for f, w in busy) / weight, 3)
        return out

    def update(self, outcomes: list[dict[str, Any]]) -> None:
        done = len(outcomes)
        t = self.totals(outcomes)
        generated = [o for o in outcomes if o["status"] == "succeeded"]
        eta = t["wall_seconds"] / len(generated) * (self.partitions - done) if generated else None
        update_progress_artifact(self.progress_id, progress=100.0 * done / self.partitions)
        self._minute_tokens(outcomes)
        rows = [self._row(o) for o in outcomes]
        per = (f"{t['output_tokens_per_s_per_gpu']:.2f} tok/s per GPU" if self.gpus
               else f"{t['output_tokens_per_s_per_engine']:.2f} tok/s per engine")
        skipped = done - len(generated)
        rows.append({"partition": f"total {done}/{self.partitions}",
                     "status": (f"ETA {eta:.0f} s" if eta else "") + (f"; {skipped} skipped" if skipped else ""),
                     "records": sum(o["stats"].get("records", 0) for o in generated), "output_tokens": t["output_tokens"],
                     "tokens_per_s": t["output_tokens_per_s"], "engine": per, "gpu_busy": t.get("gpu_busy_fraction", "")})
        create_table_artifact(key="hare-partitions", table=rows,
                              description=f"Run {self.run_id}: partitions as they finish (wall-clock throughput; "
                                          "partitions committed by an earlier attempt are skipped and carry no rate)")
        create_table_artifact(key="hare-throughput", table=self._timeline(),
                              description=f"Run {self.run_id}: output tokens/s per minute of generation")

    @staticmethod
    def _row(o: dict[str, Any]) -> dict[str, Any]:
        """A finished partition; one skipped as already committed shows no rate (nothing ran now)."""
        st, skipped = o["stats"], o["status"] == "skipped"
        return {"partition": o["partition_id"], "status": "skipped (committed earlier)" if skipped else o["status"],
                "records": st.get("records", ""), "output_tokens": "" if skipped else st.get("output_tokens", ""),
                "tokens_per_s": "" if skipped else st.get("output_tokens_per_s", ""),
                "engine": "" if skipped else st.get("engine", ""),
                "gpu_busy": "" if skipped else st.get("gpu_busy_fraction", "")}

    def _minute_tokens(self, outcomes: list[dict[str, Any]]) -> None:
        """Credit the output tokens of partitions generated since the last update to this minute."""
        minute = int((time.monotonic() - self.started) // 60)
        for o in outcomes[self._seen:]:
            if o["status"] == "succeeded":
                self._per_minute[minute] = self._per_minute.get(minute, 0) + o["stats"].get("output_tokens", 0)
                self._partitions_per_minute[minute] = self._partitions_per_minute.get(minute, 0) + 1
        self._seen = len(outcomes)

    def _timeline(self) -> list[dict[str, Any]]:
        """One row per minute since generation started: partitions finished, tokens, tokens/s.
        A partition's tokens count in the minute it finished (a partition is the unit of commit)."""
        last = max(self._per_minute, default=0)
        return [{"minute": m + 1, "partitions": self._partitions_per_minute.get(m, 0),
                 "output_tokens": self._per_minute.get(m, 0),
                 "output_tokens_per_s": round(self._per_minute.get(m, 0) / 60.0, 2)}
                for m in range(last + 1)]


def run_synthesize(config_path: str, run_id: str | None = None, store_url: str | None = None,
                   progress: bool = False, allow_changed_inputs: bool = False) -> dict[str, Any]:
    """Validate the config, bring up the Prefect API and Ray, run the flow (``hare run``).

    ``progress``: show the live terminal view and send log lines to a file (the CLI's default).
    """
    cfg = load_config(config_path, store_url=store_url)  # a bad config or run id fails here, before anything starts
    run_id = check_key_part(run_id or new_run_id(cfg), "run id")
    _check_resumable(cfg, run_id, allow_changed_inputs)
    with _driver(cfg, run_id, progress):
        return synthesize(config_path=config_path, run_id=run_id, store_url=store_url,
                          allow_changed_inputs=allow_changed_inputs)


def run_rerun_failed(run_id: str, store_url: str, progress: bool = False,
                     allow_changed_inputs: bool = False) -> dict[str, Any]:
    """Check the run and its config exist, bring up the Prefect API and Ray, run the flow (``hare rerun``)."""
    check_store(absolute_store_url(store_url))  # before run.json is read: one line, not retries
    cfg = config_of_run(store_url, run_id)
    _check_resumable(cfg, run_id, allow_changed_inputs)
    with _driver(cfg, run_id, progress):
        return rerun_failed(run_id=run_id, store_url=cfg.store.url, allow_changed_inputs=allow_changed_inputs)


def _check_resumable(cfg: RunConfig, run_id: str, allow_changed_inputs: bool) -> None:
    """Before anything starts: a resume whose input files changed (RunError naming them), or a
    run id another live process holds (LeaseHeld naming it), is one line and exit 2."""
    from hare.lease import LeaseHeld, read_lease, run_lease_key

    check_store(cfg.store.url)  # first: an unreachable store is one line (short budget), not retries
    store = open_store(cfg.store.url)
    check_resume_inputs(store, cfg, run_id, allow_changed_inputs, write=False)
    holder = read_lease(store, run_lease_key(run_id))
    if holder is not None and holder.live():
        raise LeaseHeld(f"run {run_id} is held by {holder.describe()}; wait for it to finish, "
                        f"or if it crashed, start again after its lease expires", holder)


@contextlib.contextmanager
def _driver(cfg: RunConfig, run_id: str, progress: bool) -> Iterator[None]:
    """What a driver command wraps a flow in: Ctrl-C handling, the terminal view, the runtime."""
    check_store(cfg.store.url)  # before anything starts: an unreachable store is one line, exit 2
    store = open_store(cfg.store.url)
    if progress:  # the dry run's figures first, as `hare plan` prints them
        from rich.console import Console

        Console().print(render_plan(*plan_and_estimate(cfg), compact=True))
    with (_interruptible(cfg, run_id),
          terminal_view(store, run_id, stage_names(cfg)[1:], progress),
          driver_runtime(cfg)):
        yield


@contextlib.contextmanager
def _interruptible(cfg: RunConfig, run_id: str) -> Iterator[None]:
    """Ctrl-C: mark run.json interrupted (if the run had started) and say how to complete it.
    Nothing committed is touched: partitions commit data first, manifest last.

    The KeyboardInterrupt can land anywhere, also inside a library that wraps it in its own
    error (pydantic serialising a task's context, seen here), so the SIGINT itself is noted and
    whatever error follows it counts as the interruption.
    """
    sigint = threading.Event()
    # SIGTERM (a Kubernetes pod stopped, `kill`) ends the driver the same way: run.json says
    # interrupted and the flow run ends, instead of the process vanishing mid-run.
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    in_main = threading.current_thread() is threading.main_thread()

    def note_sigint(signum: int, frame: Any) -> None:
        sigint.set()
        before = previous.get(signal.Signals(signum))
        if callable(before):
            before(signum, frame)
        else:
            raise KeyboardInterrupt

    if in_main:
        for sig in previous:
            signal.signal(sig, note_sigint)
    try:
        yield
    except BaseException as exc:
        if not (sigint.is_set() or _caused_by_interrupt(exc)):
            raise
        store = open_store(cfg.store.url)
        started = store.exists(run_json(run_id))
        if started:
            finish_run(store, run_id, "interrupted", {"error": "interrupted (KeyboardInterrupt)"})
        raise RunInterrupted(
            f"interrupted: run {run_id}; committed partitions are kept"
            + (f"; complete it with: hare rerun {run_id} --store {store.url}" if started else "; nothing was started")
        ) from None
    finally:
        if in_main:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _caused_by_interrupt(exc: BaseException | None) -> bool:
    """A KeyboardInterrupt, or an error some library raised from one (also when it kept only
    the name in its message), anywhere in the exception chain."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, KeyboardInterrupt) or "KeyboardInterrupt" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False
