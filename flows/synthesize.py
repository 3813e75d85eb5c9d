"""Flow ``synthesize``: the whole DAG of a run; :func:`run_dag` reads top to bottom as design.md draws it.

    plan -> generate (one task a partition, on Ray, engines in actors), and behind each partition
            as it commits, its streamed stages: [cleanup -> validate ->] quality -> [pii ->] decontam -> features
         -> top-up rounds: partitions for the strata the stages emptied, generated and streamed alike
         -> stage reports -> dedup (global, over stored features) -> diversity -> publish

Flow ``rerun-failed`` takes only a run id: it reads the config from run.json and redoes what the
manifests say is missing, failed or altered, then the downstream stages.

Call :func:`run_synthesize` (what ``hare run`` does): it prepares the Prefect API and Ray, then
runs the flow (flows/driver.py). Re-running with the same ``run_id`` resumes: committed partitions
are skipped, the rest are generated, and the dataset is published once all are committed. How
the run ended is recorded in one place (flows/outcome.py); the engines and the streamed stages
are flows/streaming.py; what the Prefect UI shows is flows/artifacts.py.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

import prefect.runtime as prefect_runtime
from prefect import flow, get_run_logger
from pydantic import ValidationError

from hare.store import lineage
from hare.config import ConfigError, RunConfig, load_config
from hare.stages.dedup.index import decision_gate, hold_index
from hare.engines.embedders import start_embedders, stop_embedders
from hare.tasks.estimate import plan_and_estimate
from hare.store.layout import estimate_key, plan_report_key, records_key, report_key, run_prefix
from hare.store.lease import Lease, hold_run
from hare.store.manifest import kept_records
from hare.store.manifest_index import load_manifests
from hare.store.runs import new_run_id, read_run
from hare.run.runtime import HareRayTaskRunner, check_store, mark_flow_run_crashed
from hare.store import DEFAULT_STORE_URL, ObjectStore, absolute_store_url, check_key_part, open_store
from hare.tasks.dedup import deduplicate
from hare.tasks.diversity import measure_diversity
from hare.tasks.plan import in_source_order, plan_run
from hare.tasks.publish import publish
from hare.tasks.stages import StageLookup, records_source, streamed_stages

from hare.flows.artifacts import plan_artifact
from hare.flows.driver import RunInterrupted, check_resumable, driver
from hare.flows.outcome import RunIncomplete, run_outcome
from hare.flows.streaming import EnginePool, Streamed, generate_and_stream, top_up

__all__ = ["RunIncomplete", "RunInterrupted", "rerun_failed", "run_rerun_failed", "run_synthesize", "synthesize"]


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
    """The run under its run id's lease (hare/store/lease.py): the same run id started twice at once
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
    """One run id: its DAG, with committed partitions and stages skipped (the manifests say)."""
    store = open_store(cfg.store.url)
    get_run_logger().info("run %s -> %s", run_id, store.uri(run_prefix(run_id)))
    lineage.emit(store, run_id, "synthesize", "START", facets={"config_hash": cfg.config_hash()})
    totals = run_dag(store, cfg, run_id, allow_changed_inputs)
    return {"run_id": run_id, "store": store.url, "flow_run_id": str(prefect_runtime.flow_run.id), **totals}


def run_dag(store: ObjectStore, cfg: RunConfig, run_id: str, allow_changed_inputs: bool) -> dict[str, Any]:
    """The DAG, top to bottom (design.md); how it ended goes to run.json in one place (run_outcome)."""
    partition_ids = plan_run(cfg, run_id, allow_changed_inputs)
    plan_artifact(run_id, estimate(store, cfg, run_id))
    with run_outcome(store, run_id) as outcome, embedding_actors(cfg, run_id):
        with EnginePool(cfg, run_id) as engines:
            streamed = generate_and_stream(cfg, run_id, partition_ids, engines, last=not cfg.plan.top_up_rounds)
            top_up(cfg, run_id, streamed, engines)  # the strata the streamed stages emptied
        streamed.check_complete(run_id, store.url)
        streamed.dataset_ids = source_order(store, cfg, run_id, streamed.dataset_ids)
        write_stage_reports(store, cfg, run_id, streamed.dataset_ids)
        with index_lease(store, cfg, run_id):  # one run at a time decides against the index and publishes into it
            dedup(cfg, run_id, streamed.dataset_ids)
            diversity(store, cfg, run_id, streamed)
            totals = publish(cfg, run_id, streamed.dataset_ids, streamed.generation)
        outcome.succeeded({**totals, "generation": streamed.generation, "streaming": streamed.streaming})
    return outcome.totals or {}


def source_order(store: ObjectStore, cfg: RunConfig, run_id: str, dataset_ids: list[str]) -> list[str]:
    """The dataset's partitions with the sources in the config's order: the dedup keeps the first
    record, so a synthesized text that repeats a corpus document listed before it is dropped."""
    return in_source_order(cfg, json.loads(store.get_bytes(plan_report_key(run_id))), dataset_ids)


def estimate(store: ObjectStore, cfg: RunConfig, run_id: str) -> dict[str, Any]:
    """The plan's cost estimate (``hare plan``) for this cluster, kept in ``plan/estimate.json``
    at the run's first start (a resume keeps it, so the card compares with what was expected)."""
    import ray

    key = estimate_key(run_id)
    if not store.exists(key):
        summary, est = plan_and_estimate(cfg, ray.cluster_resources().get("GPU") or None)
        store.put_bytes(key, json.dumps({"plan": summary, "estimate": est}, indent=2).encode())
    return json.loads(store.get_bytes(key))


@contextlib.contextmanager
def embedding_actors(cfg: RunConfig, run_id: str) -> Iterator[None]:
    """The run's embedding actors (features, paraphrase windows, diversity), up for the whole DAG."""
    embedders = start_embedders(cfg, run_id)
    try:
        yield
    finally:
        stop_embedders(embedders)


def index_lease(store: ObjectStore, cfg: RunConfig, run_id: str) -> contextlib.AbstractContextManager[Any]:
    """The store's index lease, from the dedup decision to the end of publish (when dedup is on)."""
    return hold_index(store, run_id, say=get_run_logger().info) if cfg.dedup.enabled else contextlib.nullcontext()


def dedup(cfg: RunConfig, run_id: str, dataset_ids: list[str]) -> None:
    """The global dedup decision over the stored features and the store's index, applied per partition."""
    if cfg.dedup.enabled:
        deduplicate.submit(cfg, run_id, dataset_ids, records_source(cfg, "dedup"), StageLookup(cfg)).result()
        decision_gate(run_id)  # tests only: a no-op unless HARE_TEST_DECISION_GATE is set


def diversity(store: ObjectStore, cfg: RunConfig, run_id: str, streamed: Streamed) -> None:
    """Diversity and coverage of what will be published, against the no-priors baseline."""
    final = records_source(cfg, "publish")
    kept = by_partition(store, run_id)
    sizes = {p: kept_records(kept[(p, final)].stats) for p in streamed.dataset_ids}
    measure_diversity.submit(cfg, run_id, sizes, streamed.baseline_ids, final).result()


def write_stage_reports(store: ObjectStore, cfg: RunConfig, run_id: str, dataset_ids: list[str]) -> None:
    """Each streamed stage's run report (``<stage>.json``), merged from the counts and extras
    its partition manifests hold: no record is read again."""
    manifests = by_partition(store, run_id)
    for stage in streamed_stages(cfg):
        if not stage.has_report:
            continue
        report = stage.report([manifests[(pid, stage.name)].stats for pid in dataset_ids])
        store.put_bytes(report_key(run_id, stage.name), json.dumps(report, indent=2).encode())
        lineage.emit(store, run_id, f"synthesize.{stage.name}", "COMPLETE",
                     outputs=[lineage.dataset(store.uri(records_key(run_id, p, stage.name))) for p in dataset_ids],
                     facets={"stage": stage.name, "partitions": len(dataset_ids)})


def by_partition(store: ObjectStore, run_id: str) -> dict[tuple[str, str], Any]:
    """Every manifest of the run by (partition, stage): one listing, the manifest index, GETs
    only for what changed since the index was written (the index is refreshed here)."""
    return {(m.partition_id, m.stage): m for m in load_manifests(store, run_id, write_back=True).values()}


def run_synthesize(config_path: str, run_id: str | None = None, store_url: str | None = None,
                   progress: bool = False, allow_changed_inputs: bool = False) -> dict[str, Any]:
    """Validate the config, bring up the Prefect API and Ray, run the flow (``hare run``).

    ``progress``: show the live terminal view and send log lines to a file (the CLI's default).
    """
    cfg = load_config(config_path, store_url=store_url)  # a bad config or run id fails here, before anything starts
    run_id = check_key_part(run_id or new_run_id(cfg), "run id")
    check_resumable(cfg, run_id, allow_changed_inputs)
    with driver(cfg, run_id, progress):
        return synthesize(config_path=config_path, run_id=run_id, store_url=store_url,
                          allow_changed_inputs=allow_changed_inputs)


def run_rerun_failed(run_id: str, store_url: str, progress: bool = False,
                     allow_changed_inputs: bool = False) -> dict[str, Any]:
    """Check the run and its config exist, bring up the Prefect API and Ray, run the flow (``hare rerun``)."""
    check_store(absolute_store_url(store_url))  # before run.json is read: one line, not retries
    cfg = config_of_run(store_url, run_id)
    check_resumable(cfg, run_id, allow_changed_inputs)
    with driver(cfg, run_id, progress):
        return rerun_failed(run_id=run_id, store_url=cfg.store.url, allow_changed_inputs=allow_changed_inputs)
