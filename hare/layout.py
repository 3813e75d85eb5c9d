"""Store keys of a run (design.md, "Object store layout"), built in one place.

Run and partition ids are checked to be single path segments, so no id can make a key that
escapes ``runs/<run_id>/``.
"""

from __future__ import annotations

from hare.store import check_key_part


def run_prefix(run_id: str) -> str:
    return f"runs/{check_key_part(run_id, 'run id')}"


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


def manifest_index_key(run_id: str) -> str:
    """The compacted index of a run's manifests (hare/manifest_index.py): a cache, never a commit."""
    return f"{run_prefix(run_id)}/partitions/_index.parquet"


def decontaminated_key(run_id: str, partition_id: str) -> str:
    return _partition_file(run_id, "decontaminated", partition_id)


def records_key(run_id: str, partition_id: str, stage: str) -> str:
    """Where a stage keeps a partition's surviving records."""
    if stage == "generate":
        return generated_key(run_id, partition_id)
    if stage == "decontam":
        return decontaminated_key(run_id, partition_id)
    return _partition_file(run_id, check_key_part(stage, "stage"), partition_id)


def features_key(run_id: str, partition_id: str) -> str:
    """MinHash signatures and embeddings of a partition's records, computed once."""
    return _partition_file(run_id, "features", partition_id)


def dedup_report_key(run_id: str) -> str:
    return _run_file(run_id, "dedup.json")


def published_index_key(run_id: str, partition_id: str) -> str:
    """What one partition of a run published, for the dedup of later runs: ids, MinHash,
    embeddings; one shard per partition, so no index object grows with the run."""
    return f"index/runs/{check_key_part(run_id, 'run id')}/{check_key_part(partition_id, 'partition id')}.parquet"


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
    return "index/minhash/_scheme.json"


def index_bands_prefix(group: int) -> str:
    return f"index/minhash/{_group(group)}/"


def index_bands_key(group: int, run_id: str, partition_id: str) -> str:
    """Band keys of what one partition published, in one bucket group."""
    return (f"{index_bands_prefix(group)}{check_key_part(run_id, 'run id')}/"
            f"{check_key_part(partition_id, 'partition id')}.parquet")


def ivf_current_key() -> str:
    """Which IVF quantizer version the store searches (retrained only when asked)."""
    return "index/ivf/current.json"


def ivf_centroids_key(version: str) -> str:
    return f"index/ivf/{check_key_part(version, 'index version')}/centroids.npy"


def index_lists_prefix(version: str, group: int) -> str:
    return f"index/ivf/{check_key_part(version, 'index version')}/{_group(group)}/"


def index_lists_key(version: str, group: int, run_id: str, partition_id: str) -> str:
    """Embeddings one partition published, in the inverted lists of one list group."""
    return (f"{index_lists_prefix(version, group)}{check_key_part(run_id, 'run id')}/"
            f"{check_key_part(partition_id, 'partition id')}.parquet")


def published_marker_key(run_id: str) -> str:
    """Written last when a run's index shards are all up: only marked runs count as published."""
    return f"index/published/{check_key_part(run_id, 'run id')}.json"


def quality_key(run_id: str) -> str:
    return _run_file(run_id, "quality.json")


def decontamination_key(run_id: str) -> str:
    return _run_file(run_id, "decontamination.json")


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
