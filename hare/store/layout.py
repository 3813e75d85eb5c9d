"""Every store key (design.md, "Object store layout"), built and taken apart in one place.

Run and partition ids are checked to be single path segments, so no id can make a key that
escapes ``runs/<run_id>/``. A stage's folder, manifest suffix and report file are its one name;
the spellings earlier runs were written with (``decontaminated/``, ``decontamination.json``,
``validation.json``) are still read: :func:`records_keys` and :func:`report_keys` list them
after the current one.
"""

from __future__ import annotations

from hare.store import check_key_part


RUNS_PREFIX = "runs/"
INDEX_PREFIX = "index/"
QUARANTINE_PREFIX = "quarantine/"

# Earlier spellings of a stage's records folder and report file, still read from older runs.
LEGACY_RECORD_FOLDERS = {"decontam": ("decontaminated",)}
LEGACY_REPORTS = {"decontam": ("decontamination.json",), "validate": ("validation.json",)}


def run_prefix(run_id: str) -> str:
    return f"{RUNS_PREFIX}{check_key_part(run_id, 'run id')}"


def run_id_of_folder(folder: str) -> str:
    """``runs/<run_id>/`` (a listed folder) -> the run id."""
    return folder.rstrip("/").rsplit("/", 1)[-1]


def run_lease_key(run_id: str) -> str:
    """The lease a driver holds on a run id while it runs it (hare/store/lease.py)."""
    return f"{run_prefix(run_id)}/_lease.json"


def _run_file(run_id: str, name: str) -> str:
    return f"{run_prefix(run_id)}/{name}"


def _partition_file(run_id: str, folder: str, partition_id: str, ext: str = "parquet") -> str:
    return f"{run_prefix(run_id)}/{folder}/{check_key_part(partition_id, 'partition id')}.{ext}"


def run_json(run_id: str) -> str:
    return _run_file(run_id, "run.json")


def plan_key(run_id: str, partition_id: str) -> str:
    return _partition_file(run_id, "plan", partition_id)


def plan_report_key(run_id: str) -> str:
    return f"{run_prefix(run_id)}/plan/report.json"


def coverage_key(run_id: str) -> str:
    """The corpus coverage the plan allocated by (``plan.allocate: coverage``), kept at the run's first start."""
    return f"{run_prefix(run_id)}/plan/coverage.json"


def estimate_key(run_id: str) -> str:
    """The plan's estimate of generation (``hare plan``), kept at the run's first start."""
    return f"{run_prefix(run_id)}/plan/estimate.json"


def diversity_key(run_id: str) -> str:
    return _run_file(run_id, "diversity.json")


def generated_key(run_id: str, partition_id: str) -> str:
    return _partition_file(run_id, "generated", partition_id)


def rejects_key(run_id: str, stage: str, partition_id: str) -> str:
    return _partition_file(run_id, f"rejects/{check_key_part(stage, 'stage')}", partition_id)


def manifest_key(run_id: str, partition_id: str, stage: str = "generate") -> str:
    """``partitions/<pid>.json`` commits generation; ``partitions/<pid>.<stage>.json`` a later stage."""
    pid = check_key_part(partition_id, "partition id")
    suffix = "" if stage == "generate" else f".{check_key_part(stage, 'stage')}"
    return f"{run_prefix(run_id)}/partitions/{pid}{suffix}.json"


def manifests_prefix(run_id: str) -> str:
    """The folder holding every commit (manifest) of a run's partitions."""
    return f"{run_prefix(run_id)}/partitions/"


def is_manifest_key(key: str) -> bool:
    """Whether a key listed under :func:`manifests_prefix` is a manifest (not the manifest index)."""
    return "/partitions/" in key and key.endswith(".json")


def parse_manifest_key(key: str) -> tuple[str, str]:
    """``.../<pid>.json`` -> (pid, "generate"); ``.../<pid>.<stage>.json`` -> (pid, stage)."""
    name = key.rsplit("/", 1)[-1].removesuffix(".json")
    pid, _, stage = name.rpartition(".")
    return (pid, stage) if pid else (name, "generate")


def manifest_index_key(run_id: str) -> str:
    """The compacted index of a run's manifests (hare/store/manifest_index.py): a cache, never a commit."""
    return f"{run_prefix(run_id)}/partitions/_index.parquet"


def records_key(run_id: str, partition_id: str, stage: str) -> str:
    """Where a stage keeps a partition's surviving records: the folder named after the stage."""
    if stage == "generate":
        return generated_key(run_id, partition_id)
    return _partition_file(run_id, check_key_part(stage, "stage"), partition_id)


def records_keys(run_id: str, partition_id: str, stage: str) -> list[str]:
    """:func:`records_key`, then the keys earlier runs wrote the same records under."""
    return [records_key(run_id, partition_id, stage),
            *(_partition_file(run_id, f, partition_id) for f in LEGACY_RECORD_FOLDERS.get(stage, ()))]


def report_key(run_id: str, stage: str) -> str:
    """A stage's run report, merged from its partitions' aggregates: ``runs/<id>/<stage>.json``."""
    return _run_file(run_id, f"{check_key_part(stage, 'stage')}.json")


def report_keys(run_id: str, stage: str) -> list[str]:
    """:func:`report_key`, then the names earlier runs wrote the same report under."""
    return [report_key(run_id, stage), *(_run_file(run_id, name) for name in LEGACY_REPORTS.get(stage, ()))]


def features_key(run_id: str, partition_id: str) -> str:
    """MinHash signatures and embeddings of a partition's records, computed once."""
    return _partition_file(run_id, "features", partition_id)


def published_index_prefix(run_id: str | None = None) -> str:
    """``index/runs/`` (every run that published), or one run's folder of index shards."""
    return f"{INDEX_PREFIX}runs/" + (f"{check_key_part(run_id, 'run id')}/" if run_id is not None else "")


def published_index_key(run_id: str, partition_id: str) -> str:
    """What one partition of a run published, for the dedup of later runs: ids, MinHash,
    embeddings; one shard per partition, so no index object grows with the run."""
    return f"{published_index_prefix(run_id)}{check_key_part(partition_id, 'partition id')}.parquet"


def index_shard_ids(key: str) -> tuple[str, str]:
    """An index shard (``.../<run_id>/<partition_id>.parquet``: under ``index/runs/``, a bucket
    group or a list group) -> (run_id, partition_id)."""
    run_id, pid = key.removesuffix(".parquet").rsplit("/", 2)[-2:]
    return run_id, pid


def index_lease_key() -> str:
    """The store's index lease: one run at a time decides against the index and publishes into it."""
    return f"{INDEX_PREFIX}_lease.json"


def _group(group: int) -> str:
    return f"g{int(group):03d}"


def run_bands_key(run_id: str, group: int, partition_id: str) -> str:
    """A partition's LSH band keys (and exact keys) in one bucket group, written by ``features``."""
    return _partition_file(run_id, f"dedup/bands/{_group(group)}", partition_id)


def run_lists_key(run_id: str, group: int, partition_id: str) -> str:
    """A partition's embeddings assigned to the inverted lists of one list group."""
    return _partition_file(run_id, f"dedup/lists/{_group(group)}", partition_id)


def minhash_params_key() -> str:
    """The store's MinHash scheme and band layout, fixed by the first run that indexes into it."""
    return f"{INDEX_PREFIX}minhash/_scheme.json"


def index_bands_prefix(group: int) -> str:
    return f"{INDEX_PREFIX}minhash/{_group(group)}/"


def index_bands_key(group: int, run_id: str, partition_id: str) -> str:
    """Band keys of what one partition published, in one bucket group."""
    return (f"{index_bands_prefix(group)}{check_key_part(run_id, 'run id')}/"
            f"{check_key_part(partition_id, 'partition id')}.parquet")


def ivf_current_key() -> str:
    """Which IVF quantizer version the store searches (retrained only when asked)."""
    return f"{INDEX_PREFIX}ivf/current.json"


def _ivf_version(version: str) -> str:
    return f"{INDEX_PREFIX}ivf/{check_key_part(version, 'index version')}/"


def ivf_centroids_key(version: str) -> str:
    return f"{_ivf_version(version)}centroids.npy"


def ivf_version_key(version: str) -> str:
    """One trained quantizer version: its settings, list groups and what it was trained on."""
    return f"{_ivf_version(version)}quantizer.json"


def ivf_lineage_key(version: str) -> str:
    """The lineage event of training (or retraining) one quantizer version."""
    return f"{_ivf_version(version)}lineage.json"


def index_lists_prefix(version: str, group: int) -> str:
    return f"{_ivf_version(version)}{_group(group)}/"


def index_lists_key(version: str, group: int, run_id: str, partition_id: str) -> str:
    """Embeddings one partition published, in the inverted lists of one list group."""
    return (f"{index_lists_prefix(version, group)}{check_key_part(run_id, 'run id')}/"
            f"{check_key_part(partition_id, 'partition id')}.parquet")


def published_markers_prefix() -> str:
    return f"{INDEX_PREFIX}published/"


def published_marker_key(run_id: str) -> str:
    """Written last when a run's index shards are all up: only marked runs count as published."""
    return f"{published_markers_prefix()}{check_key_part(run_id, 'run id')}.json"


def quarantine_key(key: str) -> str:
    """Where a corrupt object is moved (hare/store/quarantine.py), under its own key."""
    return f"{QUARANTINE_PREFIX}{key}"


def quarantine_reason_key(key: str) -> str:
    """The note beside a quarantined object: why, when, its sha256 and size."""
    return f"{quarantine_key(key)}{_REASON}"


def is_quarantine_reason(key: str) -> bool:
    """Whether a key under ``quarantine/`` is a reason note (not a quarantined object)."""
    return key.startswith(QUARANTINE_PREFIX) and key.endswith(_REASON)


_REASON = ".reason.json"


def dataset_prefix(run_id: str) -> str:
    return f"{run_prefix(run_id)}/dataset"


def dataset_shard_key(run_id: str, shard: int) -> str:
    return f"{dataset_prefix(run_id)}/part-{shard:05d}.parquet"


def dataset_manifest_key(run_id: str) -> str:
    return f"{dataset_prefix(run_id)}/_manifest.json"


def card_key(run_id: str) -> str:
    return _run_file(run_id, "README.md")


def run_log_key(run_id: str) -> str:
    """The driver's log of ``hare run`` (Prefect, Ray and engine lines), copied at the end."""
    return _run_file(run_id, "logs/hare-run.log")


def lineage_key(run_id: str, name: str) -> str:
    return f"{run_prefix(run_id)}/lineage/{check_key_part(name, 'lineage event')}.json"
