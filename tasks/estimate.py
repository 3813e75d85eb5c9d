"""What a run will cost, before it runs: ``hare plan CONFIG`` (a dry run with an estimate).

The plan is the real one (the allocation and partition ids of ``tasks/plan.py``: deterministic
and cheap, nothing is written). The cost is a throughput figure times the expected output tokens:

* expected output tokens = all prompts (dataset + baseline) x tokens per prompt, where tokens per
  prompt is the mean measured by earlier succeeded runs of the same model with the same token
  budget (:func:`budget_signature`: ``sampling.max_tokens``, the per-kind ``max_tokens``, the
  self-consistency settings), else each kind's budget x ``DEFAULT_FILL`` (stated under
  ``source``). A kind's budget is its ``max_tokens``; a self-consistency kind's is the problem
  (``validation.problem_max_tokens``) plus k solutions (plus k forced answer lines);
* top-up rounds (``plan.top_up_rounds``) add, at most, the prompts of the strata the stages
  empty: prompts x r + prompts x r^2 ... with r the share of prompts the record stages removed
  (:data:`DEFAULT_REMOVED_SHARE`, stated), at the dataset's tokens per prompt;
* throughput = the median output tokens/s per engine (per GPU on a GPU) of earlier succeeded runs
  of the same model on the same kind of device (run.json ``summary.generation``), else a default
  per model size and GPU from the throughput table (hare/priors/throughput-v1.yaml: published
  vLLM figures with their sources, interpolated between sizes; this project's CPU measurement),
  labelled "default, not measured";
* generation wall time = expected tokens / (tokens/s per engine x busy engines); GPU-hours = wall
  hours x engines x ``model.num_gpus`` (0 on CPUs). Engines count whole tensor-parallel groups
  per node when ``--gpus-per-node`` is given, and a layout no node can hold is refused.

An OpenAI-compatible endpoint (``model.backend: openai``) is priced by :func:`endpoint_estimate`:
its tokens/s are the server's, measured by earlier runs against the same endpoint and served
model only (never the GPU table: the server's hardware is unknown here), else an assumed
:data:`DEFAULT_ENDPOINT_TOKENS_PER_S_PER_REQUEST` x the requests the config keeps in flight; it
costs wall hours, not GPU-hours, and money when ``model.endpoint`` sets prices per million tokens.

Only generation is estimated: engine load, the record stages and publish come on top
(docs/estimate.md). Nothing here connects to Ray or Prefect; the cluster's GPU count is a
parameter (``--gpus``).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import re
import statistics
from pathlib import Path
from typing import Any

import yaml

from hare.backends.openai_backend import endpoint_key, token_cost
from hare.config import RunConfig
from hare.priors.taxonomy import PRIORS_DIR
from hare.store.layout import RUNS_PREFIX, run_json
from hare.store import KeyNotFound, ObjectStore, StoreError, check_key_part

# Tokens per prompt when no earlier run of the model measured it: outputs stop before
# max_tokens on average. The demo's 135M model filled 0.69 of 256 (docs/benchmarks.md:
# 11,312 tokens for 64 prompts); 0.8 leaves room for chattier models.
DEFAULT_FILL = 0.8

# Share of a round's prompts the record stages remove (what a top-up round re-plans) when no
# figure is given: the demo's first round, SmolLM2-135M (docs/benchmarks.md#reasoning-kinds:
# 21 of 48 planned prompts lost their record). A stronger model loses fewer.
DEFAULT_REMOVED_SHARE = 0.45

# Output tokens of a forced final-answer line (validation.answer_line: guided; its max_tokens).
ANSWER_LINE_TOKENS = 16

# The decontamination judge (decontam.judge), when on: candidate pairs it is asked about per
# record checked, and prompt tokens per pair, by whether the every-window route proposes pairs
# too (it finds far more in the band), as bench/decontam_recall.py --judge measured them on 588
# clean records (SmolLM2-135M generations and public-domain prose; GSM8K and TruthfulQA; the
# default band 0.5..0.8), judge_on_clean of bench/results/decontam-2026-12-05-judge-tuning.json
# (CPU routes: 17 pairs, 2,181 prompt tokens) and decontam-2026-12-05-everywindow-judge-tuning.json
# (every window: 209 pairs, 27,560 prompt tokens). Other benchmarks and models ask more or fewer.
JUDGE_PAIRS_PER_RECORD = {"cpu_routes": 0.0289, "every_window": 0.3554}
JUDGE_PROMPT_TOKENS_PER_PAIR = {"cpu_routes": 128.3, "every_window": 131.9}
JUDGE_OUTPUT_TOKENS_PER_PAIR = 2.0

# run.json files read at most (the newest by the time stamp in the run id), so a big store
# costs one listing and this many small reads.
SCAN_LIMIT = 20

# The default throughput table (published vLLM figures per GPU and model size, this project's CPU
# measurement), as data: hare/priors/throughput-v1.yaml, each row with its source.
THROUGHPUT_TABLE = PRIORS_DIR / "throughput-v1.yaml"
# Sizes the name does not give: assume a 7-8B model on a GPU (the common case there) and the
# measured 135M figure on CPUs (the only CPU figure there is).
UNKNOWN_GPU_SIZE_B = 7.5

# Output tokens/s one request in flight gets from an endpoint no earlier run measured: a served
# model decodes each sequence of a busy batch at tens of tokens/s (hosted APIs quote 30-100 per
# stream); the low end, so the wall time errs long. x the requests in flight (engines x
# max_concurrency), as the server batches them; a server saturates before that grows far.
DEFAULT_ENDPOINT_TOKENS_PER_S_PER_REQUEST = 30.0

_SIZE = re.compile(r"(?:\d+x)?(\d+(?:\.\d+)?)([mMbB])")
_RUN_STAMP = re.compile(r"-(\d{8}T\d{6}Z)-[0-9a-f]+$")


# ---------------------------------------------------------------------------------------------
# model size and defaults


def model_size_b(model_name: str) -> float | None:
    """Parameters in billions parsed from a model name (``SmolLM2-135M-Instruct`` -> 0.135,
    ``Qwen2.5-7B-Instruct`` -> 7.0, ``Mixtral-8x7B`` -> 7.0 per expert), else None."""
    for part in re.split(r"[/_\-\s]+", model_name):
        m = _SIZE.fullmatch(part)
        if m:
            value = float(m.group(1))
            return value / 1000 if m.group(2).lower() == "m" else value
    return None


def size_label(size_b: float | None) -> str:
    if size_b is None:
        return "unknown"
    return f"{size_b * 1000:g}M" if size_b < 1 else f"{size_b:g}B"


@functools.lru_cache(maxsize=2)
def throughput_table(path: Path = THROUGHPUT_TABLE) -> dict[str, Any]:
    """The default throughput table (:data:`THROUGHPUT_TABLE`), GPU rows sorted by size."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    for rows in doc["gpus"].values():
        rows.sort(key=lambda r: r["params_b"])
    return doc


def gpu_types() -> list[str]:
    """The GPUs the table has published figures for (``hare plan --gpu-type``)."""
    return sorted(throughput_table()["gpus"])


def _per_gpu(row: dict[str, Any]) -> float:
    return row["output_tokens_per_s"] / row["tensor_parallel"]


def _row_note(row: dict[str, Any]) -> str:
    return (f"{row['model']} at TP {row['tensor_parallel']}: {row['output_tokens_per_s']:,.0f} output tok/s "
            f"(vLLM {row['vllm']}; {row['source']})")


def gpu_prior(size_b: float, gpu: str | None = None) -> dict[str, Any]:
    """Default output tokens/s per GPU for a ``size_b``-billion model on ``gpu`` (the table's
    ``default_gpu`` if None), with how it was obtained: ``published`` (a row of that size),
    ``interpolated`` (log-log between the two rows around it) or ``extrapolated`` (the table's
    stated rules past its ends), and the rows used."""
    table = throughput_table()
    gpu = gpu or table["default_gpu"]
    if gpu not in table["gpus"]:
        raise ValueError(f"no published throughput for GPU {gpu!r}; known: {', '.join(gpu_types())}")
    rows, rules = table["gpus"][gpu], table["extrapolation"]
    exact = [r for r in rows if math.isclose(r["params_b"], size_b, rel_tol=0.02)]
    if exact:
        return {"rate": _per_gpu(exact[0]), "how": "published", "rows": exact}
    lo, hi = rows[0], rows[-1]
    if size_b < lo["params_b"]:
        growth = (lo["params_b"] / size_b) ** rules["small_exponent"]
        factor = min(rules["max_small_factor"], growth)
        return {"rate": _per_gpu(lo) * factor, "how": "extrapolated", "rows": [lo],
                "rule": (f"x {factor:.2f}: ({lo['params_b']:g}B / {size_label(size_b)}) ^ {rules['small_exponent']:g}"
                         f" = {growth:.2f}, at most x {rules['max_small_factor']:g}")}
    if size_b > hi["params_b"]:
        return {"rate": _per_gpu(hi) * hi["params_b"] / size_b, "how": "extrapolated", "rows": [hi],
                "rule": f"x {hi['params_b']:g}B / {size_label(size_b)} (memory-bound decoding)"}
    below = max((r for r in rows if r["params_b"] < size_b), key=lambda r: r["params_b"])
    above = min((r for r in rows if r["params_b"] > size_b), key=lambda r: r["params_b"])
    t = math.log(size_b / below["params_b"]) / math.log(above["params_b"] / below["params_b"])
    rate = math.exp(math.log(_per_gpu(below)) + t * (math.log(_per_gpu(above)) - math.log(_per_gpu(below))))
    return {"rate": rate, "how": "interpolated", "rows": [below, above]}


def default_throughput(model_name: str, on_gpu: bool, gpu: str | None = None) -> dict[str, Any]:
    """The stated default for a model size, from the throughput table: tokens/s per GPU on a GPU
    (``gpu``: a type of the table, else its default), per engine on CPUs. Its ``detail`` says it is
    not measured, how it was derived, and cites each published row used."""
    size = model_size_b(model_name)
    if on_gpu:
        gpu = gpu or throughput_table()["default_gpu"]
        assumed = size if size is not None else UNKNOWN_GPU_SIZE_B
        prior = gpu_prior(assumed, gpu)
        rate = prior["rate"]
        note = "" if size is not None else "model size unknown, assumed 7-8B; "
        how = {"published": "published vLLM figure",
               "interpolated": "interpolated (log-log) between published vLLM figures",
               "extrapolated": f"extrapolated ({prior.get('rule', '')}) from a published vLLM figure"}[prior["how"]]
        rows = "; ".join(_row_note(r) for r in prior["rows"])
        return {"kind": "default", "tokens_per_s_per_gpu": round(rate, 1), "model_size": size_label(size),
                "gpu": gpu, "derivation": prior["how"], "sources": sorted({r["source"] for r in prior["rows"]}),
                "detail": (f"default, not measured: {note}{how} for a {size_label(assumed)} model on {gpu}: "
                           f"{rate:,.0f} output tok/s per GPU ({rows}; hare/priors/throughput-v1.yaml)")}
    cpu = throughput_table()["cpu"]
    base, params = cpu["output_tokens_per_s_per_engine"], cpu["params_b"]
    if size is None:
        rate, note = base, "model size unknown, assumed 135M; "
    else:
        # Decoding on CPUs is memory-bound: tokens/s falls about inversely with the parameters.
        rate = base * min(1.0, params / size)
        note = "" if size <= params else f"scaled by 135M/{size_label(size)} from the 135M figure; "
    return {"kind": "default", "tokens_per_s_per_engine": round(rate, 2), "model_size": size_label(size),
            "detail": (f"default, not measured: {note}{cpu['model']} on {cpu['setup'].split(',')[0]}, "
                       f"{cpu['vllm']}, measured by this project ({cpu['source']}): {rate:,.1f} output tok/s per engine")}


# ---------------------------------------------------------------------------------------------
# earlier runs in the store


def _stamp(run_id: str) -> str:
    m = _RUN_STAMP.search(run_id)
    return m.group(1) if m else ""


def _safe_id(run_id: str) -> bool:
    try:
        check_key_part(run_id, "run id")
    except StoreError:
        return False
    return True


def scan_runs(store: ObjectStore, limit: int = SCAN_LIMIT) -> list[dict[str, Any]]:
    """The ``limit`` newest run.json documents of the store, newest first.

    Newest by the UTC stamp inside the run id (``<name>-<YYYYmmddTHHMMSSZ>-<hex>``,
    ``hare.store.runs.new_run_id``), not by the id itself, which sorts by config name first; ids
    without a stamp (chosen with ``--run-id``) count as the oldest.
    """
    ids = sorted((r for r in store.folders(RUNS_PREFIX) if _safe_id(r)), key=lambda r: (_stamp(r), r), reverse=True)
    out = []
    for run_id in ids[:limit]:
        try:
            info = json.loads(store.get_bytes(run_json(run_id)))
        except (KeyNotFound, ValueError):
            continue
        if isinstance(info, dict):
            info.setdefault("run_id", run_id)
            out.append(info)
    return out


def generated_by(model: dict[str, Any]) -> tuple[str, str | None]:
    """Whose figures a config's tokens are, from its ``model`` section as JSON (run.json
    ``config.model`` or ``RunConfig.to_jsonable()["model"]``): ``(model.name, None)`` in-process;
    ``(served model, endpoint_key)`` for backend openai, the served model being
    ``endpoint.served_model``, else ``model.name``. An endpoint's tokens/s are its server's, so
    they compare only with runs against the same endpoint and served model."""
    if model.get("backend") == "openai":
        ep = model.get("endpoint") or {}
        return str(ep.get("served_model") or model.get("name")), endpoint_key(str(ep.get("base_url") or ""))
    return str(model.get("name")), None


def _same_model(runs: list[dict[str, Any]], model_name: str, endpoint: str | None = None) -> list[dict[str, Any]]:
    """Succeeded runs of this model that recorded the generation stage's figures: in-process
    vLLM runs of ``model_name``, or, given ``endpoint`` (an ``endpoint_key``), runs that sent
    ``model_name`` to that endpoint (:func:`generated_by`)."""
    out = []
    for info in runs:
        cfg = info.get("config") or {}
        gen = (info.get("summary") or {}).get("generation")
        model = cfg.get("model") or {}
        # only real generation counts: a deterministic-fake run under the same model name is no figure
        if (model.get("backend", "vllm") in ("vllm", "openai") and generated_by(model) == (model_name, endpoint)
                and info.get("status") == "succeeded" and isinstance(gen, dict)):
            out.append(info)
    return out


def measured_throughput(store: ObjectStore | None, model_name: str, *, on_gpu: bool | None = None,
                        runs: list[dict[str, Any]] | None = None, endpoint: str | None = None) -> dict[str, Any] | None:
    """Median output tokens/s per engine (and per GPU, for GPU runs; and per run: the endpoint's
    rate) of earlier runs of a model.

    Looks at the :data:`SCAN_LIMIT` newest run.json of the store (or ``runs``, from
    :func:`scan_runs`), keeps those of ``model_name`` that succeeded and generated partitions
    themselves (``summary.generation.generated`` > 0; a resume that skipped everything measured
    nothing), on GPUs or CPUs only when ``on_gpu`` says; given ``endpoint``, only runs against
    that endpoint (:func:`_same_model`), with the requests they kept in flight. None when no run
    qualifies.
    """
    if runs is None:
        if store is None:
            return None
        runs = scan_runs(store)
    rows = []
    in_flight: set[int] = set()
    for info in _same_model(runs, model_name, endpoint):
        gen = info["summary"]["generation"]
        if not gen.get("generated") or not gen.get("output_tokens") or not gen.get("output_tokens_per_s_per_engine"):
            continue
        gpus = float(gen.get("gpus") or 0)
        if on_gpu is not None and (gpus > 0) != on_gpu:
            continue
        rows.append((info["run_id"], gen, gpus))
        if endpoint is not None:  # what the endpoint's rate was measured at: engines x max_concurrency
            per_engine = ((info["config"].get("model") or {}).get("endpoint") or {}).get("max_concurrency")
            in_flight.add(int(per_engine or 0) * int(gen.get("engines") or 0))
    if not rows:
        return None
    per_gpu = [g["output_tokens_per_s_per_gpu"] for _, g, n in rows if n > 0 and g.get("output_tokens_per_s_per_gpu")]
    return {
        "kind": "measured",
        "runs": len(rows),
        "newest_run": max(rows, key=lambda r: (_stamp(r[0]), r[0]))[0],
        "run_ids": [r[0] for r in rows],
        "tokens_per_s_per_engine": round(statistics.median(g["output_tokens_per_s_per_engine"] for _, g, _ in rows), 2),
        "tokens_per_s_per_gpu": round(statistics.median(per_gpu), 2) if per_gpu else None,
        "tokens_per_s": round(statistics.median(g.get("output_tokens_per_s") or 0.0 for _, g, _ in rows), 2),
        "output_tokens": sum(g["output_tokens"] for _, g, _ in rows),
        "wall_seconds": round(sum(g.get("wall_seconds", 0.0) for _, g, _ in rows), 2),
        "engines": sorted({g.get("engines", 0) for _, g, _ in rows}),
        "gpus": sorted({n for _, _, n in rows}),
        **({"in_flight": sorted(in_flight)} if endpoint is not None else {}),
    }


def budget_signature(config: dict[str, Any]) -> str:
    """What decides a run's output tokens per prompt besides the model, from a config as JSON
    (``RunConfig.to_jsonable()`` or run.json ``config``): ``sampling.max_tokens``, each kind's
    own ``max_tokens``, and the self-consistency settings when validation is on. Runs with the
    same signature (and model) measure each other's tokens per prompt."""
    sampling = config.get("sampling") or {}
    by_kind = {k: v.get("max_tokens") for k, v in (sampling.get("by_kind") or {}).items()
               if isinstance(v, dict) and v.get("max_tokens") is not None}
    validation = config.get("validation") or {}
    voted = ({f: validation.get(f) for f in ("k", "problem_max_tokens", "answer_line")}
             if validation.get("enabled") else None)
    return json.dumps({"max_tokens": sampling.get("max_tokens"), "by_kind": by_kind, "validation": voted},
                      sort_keys=True)


def prompt_budget(cfg: RunConfig, kind: str) -> int:
    """Most output tokens one prompt of ``kind`` can cost: its ``max_tokens``; for a
    self-consistency kind the problem plus k solutions (and k forced answer lines)."""
    own = cfg.sampling.for_kind(kind).max_tokens
    k = cfg.validation.samples(kind)
    if k <= 1:
        return own
    lines = k * ANSWER_LINE_TOKENS if cfg.validation.answer_line == "guided" else 0
    return cfg.validation.problem_max_tokens + k * own + lines


def measured_tokens_per_prompt(runs: list[dict[str, Any]], model_name: str, signature: str,
                               endpoint: str | None = None) -> dict[str, Any] | None:
    """Median, over earlier succeeded runs of the model (against ``endpoint``, given one: what
    :func:`_same_model` picks) with the same token budget
    (:func:`budget_signature`), of their mean output tokens per dataset prompt (run.json
    ``summary.output_tokens``, the dataset partitions' manifests, less the top-up rounds' tokens
    (``summary.generation.top_up``), over ``plan.partitions x plan.prompts_per_partition``)."""
    means, ids = [], []
    for info in _same_model(runs, model_name, endpoint):
        cfg, summary = info["config"], info["summary"]
        plan = cfg.get("plan") or {}
        prompts = int(plan.get("partitions", 0)) * int(plan.get("prompts_per_partition", 0))
        if budget_signature(cfg) != signature or not prompts or not summary.get("output_tokens"):
            continue
        # the plan's prompts only: a top-up round's tokens are the estimate's top-up term
        top_up = sum(r.get("output_tokens", 0) for r in (summary.get("generation") or {}).get("top_up", []))
        means.append((summary["output_tokens"] - top_up) / prompts)
        ids.append(info["run_id"])
    if not means:
        return None
    return {"kind": "measured", "tokens_per_prompt": round(statistics.median(means), 2),
            "runs": len(ids), "newest_run": max(ids, key=lambda r: (_stamp(r), r)),
            "detail": (f"measured: median mean output tokens per prompt of {len(ids)} earlier run(s) "
                       f"of {model_name} with the same token budget (max_tokens, per-kind max_tokens, k)")}


# ---------------------------------------------------------------------------------------------
# plan and estimate


def plan_summary(cfg: RunConfig, store: ObjectStore | None = None, *,
                 runs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Prompts per kind, domain, audience and style of the real plan, partitions, and the
    expected output tokens (with their ``source``: measured by earlier runs in ``store``, or
    ``sampling.max_tokens x DEFAULT_FILL``). The counts come from the plan's allocation alone
    (``count_plan``: no prompt is rendered), so a 10M-prompt plan is summed in seconds."""
    from hare.tasks.plan import count_plan, is_baseline, plan_partition_ids, plan_source_partitions, source_summary

    report = count_plan(cfg).report(cfg)
    parts = plan_partition_ids(cfg)
    baseline_parts = [p for p in parts if is_baseline(p)]
    sources = source_summary(cfg, plan_source_partitions(cfg))  # reads the task datasets, lists the corpus
    rewrite_prompts = sum(s.get("prompts", 0) for s in sources if s["kind"] == "rewrite")
    source_parts = sum(s["partitions"] for s in sources if s["kind"] != "synthesize")
    total = report["prompts"] + report["baseline_prompts"] + rewrite_prompts
    if runs is None and store is not None:
        runs = scan_runs(store)
    max_tokens = cfg.sampling.max_tokens
    budgets = {kind: prompt_budget(cfg, kind) for kind in report["kinds"]}
    dataset_budget = sum(n * budgets[kind] for kind, n in report["kinds"].items())
    config = cfg.to_jsonable()
    model_name, endpoint = generated_by(config["model"])
    measured = measured_tokens_per_prompt(runs or [], model_name, budget_signature(config), endpoint)
    if measured is not None:
        per_prompt, source = measured["tokens_per_prompt"], measured
        plan_tokens = total * per_prompt
    else:
        plan_tokens = (dataset_budget + (report["baseline_prompts"] + rewrite_prompts) * max_tokens) * DEFAULT_FILL
        per_prompt = plan_tokens / total if total else 0.0
        voted = {k: n for k in report["kinds"] if (n := cfg.validation.samples(k)) > 1}
        source = {"kind": "default", "fill_factor": DEFAULT_FILL, "budget_per_prompt": budgets,
                  "detail": (f"default, not measured: each kind's token budget per prompt x fill factor "
                             f"{DEFAULT_FILL} ({', '.join(f'{k} {b}' for k, b in budgets.items())}"
                             + (f"; voted kinds: the problem + k solutions, k {voted}" if voted else "")
                             + f"; no earlier succeeded run of {cfg.model.name} with this token budget)")}
    prompts = report["prompts"]
    dataset_per_prompt = (per_prompt if measured is not None or not prompts
                          else dataset_budget * DEFAULT_FILL / prompts)
    rounds = cfg.plan.top_up_rounds
    top_up = round(sum(prompts * DEFAULT_REMOVED_SHARE ** i for i in range(1, rounds + 1)))
    judge = judge_estimate(cfg, prompts + rewrite_prompts + top_up)
    return {
        "config": cfg.name,
        "config_hash": cfg.config_hash(),
        "model": cfg.model.name,
        "prompts": report["prompts"],
        "baseline_prompts": report["baseline_prompts"],
        "rewrite_prompts": rewrite_prompts,
        "total_prompts": total,
        "partitions": len(parts) - len(baseline_parts) + source_parts,
        "baseline_partitions": len(baseline_parts),
        "total_partitions": len(parts) + source_parts,
        "sources": sources,
        "prompts_per_partition": cfg.plan.prompts_per_partition,
        "kinds": report["kinds"],
        "domains": report["domains"],
        "audiences": report["audiences"],
        "styles": report["styles"],
        "leaves": len(report["leaves"]),
        "leaves_covered": sum(1 for n in report["leaves"].values() if n),
        "max_tokens": max_tokens,
        "expected_tokens_per_prompt": round(per_prompt, 2),
        "top_up_rounds": rounds,
        "expected_top_up_prompts": top_up,
        "top_up_source": (f"default, not measured: up to {rounds} round(s), each re-planning the "
                          f"{DEFAULT_REMOVED_SHARE:.0%} of the round before's prompts the record stages are "
                          f"assumed to remove (the demo's measured share)") if rounds else "no top-up rounds",
        "expected_output_tokens": int(round(plan_tokens + top_up * dataset_per_prompt))
                                  + (judge["output_tokens"] if judge else 0),
        "judge": judge,
        "source": source,
    }


def judge_estimate(cfg: RunConfig, records: int) -> dict[str, Any] | None:
    """The decontamination judge's pairs and tokens (None when it is off): ``records`` checked
    (the dataset's prompts, rewrites and expected top-up prompts, one record each at most; a
    corpus's documents are not known before it is read) x :data:`JUDGE_PAIRS_PER_RECORD` (of
    the routes the run uses), x the measured tokens per pair. Its output tokens join the
    expected output tokens (they are generated by the same engines), its prompt tokens the
    expected input tokens."""
    if not cfg.decontam.benchmarks or not cfg.decontam.judge_on(cfg.model):
        return None
    routes = "every_window" if cfg.decontam.every_window_on(cfg.embedding) else "cpu_routes"
    rate, prompt = JUDGE_PAIRS_PER_RECORD[routes], JUDGE_PROMPT_TOKENS_PER_PAIR[routes]
    pairs = int(round(records * rate))
    corpus = any(s.kind == "corpus" for s in cfg.run_sources())
    return {"pairs": pairs, "prompt_tokens": int(round(pairs * prompt)),
            "output_tokens": int(round(pairs * JUDGE_OUTPUT_TOKENS_PER_PAIR)),
            "detail": (f"default, not measured by a run: {rate} pairs per record checked "
                       f"({'with' if routes == 'every_window' else 'without'} the every-window route) x {records:,} "
                       f"records, {prompt:g} prompt + {JUDGE_OUTPUT_TOKENS_PER_PAIR:g} output tokens per pair "
                       "(bench/decontam_recall.py --judge on clean records, GSM8K and TruthfulQA, the default band "
                       f"0.5..0.8; this config's: {cfg.decontam.judge_low}..{cfg.decontam.judge_high})"
                       + ("; the corpus's documents are not counted" if corpus else ""))}


def cluster_nodes(gpus: float | None, gpus_per_node: float | None) -> list[dict[str, float]] | None:
    """The nodes ``hare plan`` is told about: ``--gpus`` in nodes of ``--gpus-per-node`` (the last
    one holding the rest), one such node without ``--gpus``; None without ``--gpus-per-node``
    (GPUs then count as one pool, nothing known of nodes)."""
    if not gpus_per_node:
        return None
    total = gpus if gpus else gpus_per_node
    full, rest = int(total // gpus_per_node), total % gpus_per_node
    return [{"GPU": float(gpus_per_node)}] * full + ([{"GPU": float(rest)}] if rest > 1e-9 else [])


def check_layout(cfg: RunConfig, gpus: float | None, gpus_per_node: float | None) -> None:
    """Refuse, in one line (:class:`hare.engines.engine.CapacityError`, exit 2), an engine layout the
    cluster ``hare plan`` is told about could never place: an engine's tensor-parallel group
    larger than the largest node (``--gpus-per-node``), or an engine larger than all the GPUs
    (``--gpus``). The rule is ``hare.engines.engine.never_fits``, the one ``hare run`` applies to
    ``ray.nodes()``."""
    from hare.engines.engine import CapacityError, never_fits, world_size

    model = cfg.model
    nodes = cluster_nodes(gpus, gpus_per_node)
    problem = never_fits(model, nodes) if nodes is not None else None
    if problem is None and gpus and model.num_gpus > gpus + 1e-9:
        problem = (f"one engine needs model.num_gpus = {model.num_gpus:g} GPUs (tensor_parallel_size "
                   f"{model.tensor_parallel_size} x pipeline_parallel_size {model.pipeline_parallel_size} = "
                   f"{world_size(model)}), the cluster has {gpus:g}")
    if problem is not None:
        shape = " ".join(f"--{k} {v:g}" for k, v in (("gpus", gpus), ("gpus-per-node", gpus_per_node)) if v)
        raise CapacityError(f"{problem} ({shape}): this layout can never be placed; lower "
                            f"model.tensor_parallel_size / model.num_gpus or plan for larger nodes")


def estimate(cfg: RunConfig, store: ObjectStore | None, gpus: float | None = None, *,
             summary: dict[str, Any] | None = None, runs: list[dict[str, Any]] | None = None,
             gpus_per_node: float | None = None, gpu_type: str | None = None) -> dict[str, Any]:
    """Engines, generation wall time, GPU-hours and where the throughput figure comes from.

    Engines: ``model.replicas``, else what the Ray cluster's ``gpus`` hold (given by the caller:
    nothing connects to Ray here; counted per node of ``gpus_per_node`` when given, a node
    holding whole tensor-parallel groups), else 1 (``hare.engines.engine.engine_count``). At most one
    engine per partition is busy (a partition goes to one engine). ``gpu_type`` picks the
    throughput table's GPU for the default figure.
    """
    from hare.engines.engine import engine_count

    if runs is None and store is not None:
        runs = scan_runs(store)
    summary = summary or plan_summary(cfg, runs=runs or [])
    if cfg.model.endpoint is not None:
        return endpoint_estimate(cfg, summary, runs or [])
    model = cfg.model
    on_gpu = model.num_gpus > 0
    nodes = cluster_nodes(gpus, gpus_per_node)
    engines = engine_count(model, {"GPU": float(gpus or 0)}, nodes)
    if model.replicas is not None:
        engines_from = "model.replicas"
    elif on_gpu and (gpus or nodes):
        shape = f" in nodes of {gpus_per_node:g}" if gpus_per_node else ""
        engines_from = f"{gpus or gpus_per_node:g} GPUs{shape} / model.num_gpus {model.num_gpus:g}"
    else:
        engines_from = "default: 1 engine (no model.replicas, no --gpus)" if on_gpu else "1 engine on CPUs"
    busy = max(1, min(engines, summary["total_partitions"]))

    measured = measured_throughput(None, model.name, on_gpu=on_gpu, runs=runs or [])
    if measured is not None and (not on_gpu or measured["tokens_per_s_per_gpu"]):
        where = "GPU" if on_gpu else "CPU"
        source = {**measured, "detail": (f"measured: median of {measured['runs']} succeeded {where} run(s) of "
                                         f"{model.name} (newest {measured['newest_run']})")}
    else:
        source = default_throughput(model.name, on_gpu, gpu_type)
    if on_gpu:
        per_gpu = source["tokens_per_s_per_gpu"]
        per_engine = per_gpu * model.num_gpus
    else:
        per_gpu, per_engine = None, source["tokens_per_s_per_engine"]

    tokens = summary["expected_output_tokens"]
    rate = per_engine * busy
    wall = tokens / rate if rate else float("inf")
    hours = wall / 3600
    return {
        "model": model.name,
        "model_size": size_label(model_size_b(model.name)),
        "device": "gpu" if on_gpu else "cpu",
        "engines": engines,
        "busy_engines": busy,
        "engines_from": engines_from,
        "num_gpus_per_engine": model.num_gpus,
        "tensor_parallel_size": model.tensor_parallel_size,
        "pipeline_parallel_size": model.pipeline_parallel_size,
        "gpus": engines * model.num_gpus,
        "expected_output_tokens": tokens,
        "tokens_source": summary["source"],
        "tokens_per_s_per_engine": round(per_engine, 2),
        "tokens_per_s_per_gpu": round(per_gpu, 2) if per_gpu is not None else None,
        "tokens_per_s": round(rate, 2),
        "wall_seconds": round(wall, 1),
        "engine_hours": round(hours * engines, 4),
        "gpu_hours": round(hours * engines * model.num_gpus, 4),
        "source": source,
    }


def expected_input_tokens(cfg: RunConfig, summary: dict[str, Any]) -> dict[str, Any]:
    """Prompt tokens the run will send, for an endpoint's price per input token, with how.

    Per prompt: the mean of the first partition's prompts as rendered by the plan (system and
    user turns), counted with ``hare.backends.replay.estimate_tokens`` (words x
    ``TOKENS_PER_WORD``; no tokenizer here, and the chat template's own tokens are not counted),
    for every prompt (dataset, baseline, expected top-up). Each of a voted kind's k solve
    requests is taken to send as much again plus the problem it solves (its budget,
    ``validation.problem_max_tokens`` x :data:`DEFAULT_FILL`); forced answer lines are left out."""
    from hare.backends.replay import TOKENS_PER_WORD, estimate_tokens
    from hare.tasks.plan import plan_partitions

    first = next(iter(plan_partitions(cfg)), None)  # a plan of other sources only may render none here
    rows = first[1].select(["system", "prompt"]).to_pylist() if first is not None else []
    rendered = [estimate_tokens(f"{r['system']} {r['prompt']}") for r in rows]
    per_prompt = statistics.fmean(rendered) if rendered else 0.0
    solves = sum(n * k for kind, n in summary["kinds"].items() if (k := cfg.validation.samples(kind)) > 1)
    problem = cfg.validation.problem_max_tokens * DEFAULT_FILL
    prompts = summary["total_prompts"] + summary["expected_top_up_prompts"]
    judge = summary.get("judge") or {}
    tokens = prompts * per_prompt + solves * (per_prompt + problem) + judge.get("prompt_tokens", 0)
    return {"tokens": int(round(tokens)), "per_prompt": round(per_prompt, 1), "solve_requests": solves,
            "detail": (f"estimated, not measured: {per_prompt:,.1f} tokens per prompt, the mean of the first "
                       f"partition's {len(rendered)} rendered prompts (words x {TOKENS_PER_WORD:g}, chat template "
                       f"not counted) x {prompts:,} prompts"
                       + (f", plus {solves:,} solve requests of the voted kinds at that + {problem:,.0f} problem "
                          f"tokens each" if solves else "")
                       + (f", plus the decontamination judge's {judge['prompt_tokens']:,}" if judge else ""))}


def endpoint_estimate(cfg: RunConfig, summary: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The estimate of a run against an OpenAI-compatible endpoint (``model.backend: openai``).

    Throughput is the endpoint's (tokens/s per endpoint, all engines together): the median of
    earlier succeeded runs that sent the same served model to the same endpoint
    (:func:`measured_throughput` with ``endpoint``), else the stated assumption
    :data:`DEFAULT_ENDPOINT_TOKENS_PER_S_PER_REQUEST` x the requests in flight (engines x
    ``max_concurrency``, at most the prompts). Never the GPU table: the server's GPUs are
    unknown, and they are not hare's, so there are no GPU-hours, only the wall hours the
    endpoint is busy. With ``price_per_m_input`` / ``price_per_m_output``, ``cost`` is
    :func:`expected_input_tokens` and the expected output tokens at those prices."""
    from hare.engines.engine import engine_count

    model, ep = cfg.model, cfg.model.endpoint
    assert ep is not None
    served, key = generated_by(cfg.to_jsonable()["model"])
    engines = engine_count(model, {})
    in_flight = max(1, min(engines * ep.max_concurrency, summary["total_prompts"]))
    measured = measured_throughput(None, served, runs=runs, endpoint=key)
    if measured is not None and measured["tokens_per_s"]:
        rate = measured["tokens_per_s"]
        source = {**measured, "detail": (
            f"measured: median output tok/s at {key} of {measured['runs']} succeeded run(s) sending {served} "
            f"(newest {measured['newest_run']}), at {' / '.join(map(str, measured['in_flight']))} requests in flight; "
            f"this config keeps {in_flight} in flight")}
    else:
        rate = DEFAULT_ENDPOINT_TOKENS_PER_S_PER_REQUEST * in_flight
        source = {"kind": "default", "in_flight": in_flight, "detail": (
            f"default, not measured: no succeeded run sent {served} to {key} yet; assumed "
            f"{DEFAULT_ENDPOINT_TOKENS_PER_S_PER_REQUEST:g} output tok/s per request in flight x {in_flight} in "
            f"flight ({engines} engine(s) x model.endpoint.max_concurrency {ep.max_concurrency}, at most the prompts)")}
    tokens = summary["expected_output_tokens"]
    wall = tokens / rate if rate else float("inf")
    inputs = expected_input_tokens(cfg, summary)
    return {
        "model": model.name, "model_size": size_label(model_size_b(served)), "device": "endpoint",
        "endpoint": key, "served_model": served,
        "engines": engines, "busy_engines": engines, "engines_from": "model.replicas" if model.replicas is not None
        else f"model.min_replicas {model.min_replicas}", "in_flight": in_flight,
        "num_gpus_per_engine": 0, "tensor_parallel_size": 1, "pipeline_parallel_size": 1, "gpus": 0,
        "expected_output_tokens": tokens, "tokens_source": summary["source"],
        "expected_input_tokens": inputs["tokens"], "input_tokens_source": inputs,
        "tokens_per_s_per_engine": round(rate / engines, 2), "tokens_per_s_per_gpu": None,
        "tokens_per_s": round(rate, 2), "wall_seconds": round(wall, 1), "wall_hours": round(wall / 3600, 4),
        "engine_hours": round(wall / 3600 * engines, 4), "gpu_hours": None,
        "price_per_m_input": ep.price_per_m_input, "price_per_m_output": ep.price_per_m_output,
        "cost": token_cost(inputs["tokens"], tokens, ep.price_per_m_input, ep.price_per_m_output),
        "source": source,
    }


def manifest_tokens(generation: dict[str, Any]) -> tuple[int, int] | None:
    """Prompt and output tokens of every generate manifest a run's generation stage counted
    (run.json ``summary.generation``: the plan's partitions, those an earlier attempt committed
    included, and each top-up round), what an endpoint billed for them; None for a run that
    did not record prompt tokens (before they were summed)."""
    rounds = [generation, *generation.get("top_up", [])]
    if any("manifest_prompt_tokens" not in r for r in rounds):
        return None
    return (sum(int(r["manifest_prompt_tokens"]) for r in rounds),
            sum(int(r["manifest_output_tokens"]) for r in rounds))


def money(amount: float | None) -> str:
    """An amount in the prices' currency (hare does not know which): ``12.35``, ``0.0042``."""
    if amount is None:
        return "n/a"
    return f"{amount:,.2f}" if amount >= 1 else f"{amount:.4f}"


def _prices(est: dict[str, Any]) -> str:
    return (f"at {est.get('price_per_m_input') or 0:g} / {est.get('price_per_m_output') or 0:g} per 1M "
            f"input / output tokens")


# ---------------------------------------------------------------------------------------------
# rendering


def duration(seconds: float | None) -> str:
    """``95`` -> ``1 min 35 s``; ``7300`` -> ``2 h 02 min``."""
    if seconds is None or not math.isfinite(seconds):
        return "n/a"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600:02d} h"


def _rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 1000 else f"{x:,.1f}"


def engine_layout(est: dict[str, Any]) -> str:
    """``4`` on CPUs; ``4 x 2 GPUs (tensor parallel 2)`` on GPUs: engines x GPUs per engine;
    ``1 x 8 requests in flight`` against an endpoint."""
    if est["device"] == "endpoint":
        return f"{est['engines']} client(s), {est['in_flight']} requests in flight"
    if est["device"] != "gpu":
        return f"{est['engines']}"
    tp, pp = est.get("tensor_parallel_size", 1), est.get("pipeline_parallel_size", 1)
    split = (f" (tensor parallel {tp}" + (f" x pipeline {pp}" if pp > 1 else "") + ")") if tp * pp > 1 else ""
    return f"{est['engines']} x {est['num_gpus_per_engine']:g} GPU{'s' if est['num_gpus_per_engine'] != 1 else ''}{split}"


def _endpoint_rows(est: dict[str, Any]) -> list[tuple[str, str]]:
    """What an endpoint costs: wall hours (no GPU-hours: its GPUs are not hare's), input tokens,
    and money when the config prices them."""
    return [
        ("model", f"{est['model']} (served {est['served_model']} at {est['endpoint']})"),
        ("engines", f"{engine_layout(est)} ({est['engines_from']})"),
        ("output tok/s", f"{_rate(est['tokens_per_s'])} at the endpoint"),
        ("generation wall time", duration(est["wall_seconds"])),
        ("endpoint wall hours", f"{est['wall_hours']:,.2f} (no GPU-hours: the server's GPUs are not hare's)"),
        ("expected input tokens", f"{est['expected_input_tokens']:,}"),
        ("money", f"{money(est['cost'])} {_prices(est)}" if est["cost"] is not None
         else "no price set (model.endpoint.price_per_m_input / price_per_m_output)"),
    ]


def _totals_rows(summary: dict[str, Any], est: dict[str, Any]) -> list[tuple[str, str]]:
    gpu = est["device"] == "gpu"
    rate = (f"{_rate(est['tokens_per_s_per_gpu'])} per GPU, {_rate(est['tokens_per_s_per_engine'])} per engine"
            if gpu else f"{_rate(est['tokens_per_s_per_engine'])} per engine")
    hardware = _endpoint_rows(est) if est["device"] == "endpoint" else [
        ("model", f"{est['model']} ({est['model_size']}, {est['device'].upper()})"),
        ("engines", f"{engine_layout(est)} ({est['engines_from']})" + (
            f", {est['busy_engines']} busy" if est["busy_engines"] != est["engines"] else "")),
        ("output tok/s", f"{rate}; {_rate(est['tokens_per_s'])} in all"),
        ("generation wall time", duration(est["wall_seconds"])),
        ("GPU-hours", f"{est['gpu_hours']:,.2f}" if gpu else "0 (CPU run)"),
        ("engine-hours", f"{est['engine_hours']:,.2f}"),
    ]
    return [
        ("prompts", f"{summary['prompts']:,}" + (f" + {summary['rewrite_prompts']:,} rewrite"
                                                  if summary.get("rewrite_prompts") else "")
                    + f" + {summary['baseline_prompts']:,} baseline = {summary['total_prompts']:,}"),
        ("partitions", f"{summary['partitions']:,} + {summary['baseline_partitions']:,} baseline = "
                       f"{summary['total_partitions']:,} (x {summary['prompts_per_partition']:,} prompts)"),
        ("leaves covered", f"{summary['leaves_covered']:,} of {summary['leaves']:,}"),
        ("tokens per prompt", f"{summary['expected_tokens_per_prompt']:,.1f} (max_tokens {summary['max_tokens']:,})"),
        *([("top-up prompts", f"~{summary['expected_top_up_prompts']:,} in up to {summary['top_up_rounds']} "
                              f"round(s), included below")] if summary.get("top_up_rounds") else []),
        *([("decontamination judge", f"~{j['pairs']:,} pairs: {j['prompt_tokens']:,} prompt + {j['output_tokens']:,} "
                                      "output tokens, the output included below")] if (j := summary.get("judge")) else []),
        ("expected output tokens", f"{summary['expected_output_tokens']:,}"),
        *hardware,
    ]


def source_holds(source: dict[str, Any]) -> str:
    """What one source of the plan holds, in words (``hare plan``, the plan artifact)."""
    if source["kind"] == "corpus":
        return (f"{source.get('files', 0):,} file(s), {source.get('bytes', 0) / 1e6:,.2f} MB of text"
                + (f", {source['row_groups']:,} Parquet row groups" if source.get("row_groups") else "")
                + (f", {source['rows']:,} dataset rows" if source.get("rows") else ""))
    return f"{source.get('prompts', 0):,} prompts"


def _sources(summary: dict[str, Any], est: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("throughput", est["source"]["detail"]), ("tokens per prompt", summary["source"]["detail"])]
    if "input_tokens_source" in est:
        rows.append(("input tokens", est["input_tokens_source"]["detail"]))
    if summary.get("top_up_rounds"):
        rows.append(("top-up prompts", summary["top_up_source"]))
    if summary.get("judge"):
        rows.append(("decontamination judge", summary["judge"]["detail"]))
    return rows


_AXES = (("kind", "kinds"), ("audience", "audiences"), ("style", "styles"), ("domain", "domains"))


def render_plan(summary: dict[str, Any], est: dict[str, Any], compact: bool = False) -> Any:
    """The plan and the estimate as a rich renderable for the terminal; ``compact``: the totals
    table only (what `hare run` shows before it starts)."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    totals = Table(title=f"hare plan: {summary['config']} (dry run, nothing written)", show_header=False,
                   title_justify="left")
    totals.add_column(style="bold")
    totals.add_column()
    for k, v in _totals_rows(summary, est):
        totals.add_row(k, v)
    parts: list[Any] = [totals]
    if compact:
        return totals
    if summary.get("sources"):
        src = Table(title="sources (one mixture: target share of the published words)", title_justify="left")
        for col in ("source", "kind", "share", "partitions", "holds"):
            src.add_column(col, justify="right" if col in ("share", "partitions") else "left")
        for s in summary["sources"]:
            src.add_row(s["name"], s["kind"], f"{s['share']:.2f}", f"{s['partitions']:,}", source_holds(s))
        parts.append(src)
    for label, key in _AXES:
        t = Table(title=f"prompts per {label}", title_justify="left")
        t.add_column(label)
        t.add_column("prompts", justify="right")
        t.add_column("share", justify="right")
        n = summary["prompts"] or 1
        for value, count in summary[key].items():
            t.add_row(value, f"{count:,}", f"{100 * count / n:.1f}%")
        parts.append(t)
    parts.append(Text("\n".join(f"{k}: {v}" for k, v in _sources(summary, est))
                      + "\nEstimate of the generation stage only: engine load, quality, decontamination, "
                        "dedup, diversity and publish come on top."))
    return Group(*parts)


def plan_markdown(summary: dict[str, Any], est: dict[str, Any]) -> str:
    """The plan and the estimate as Markdown (a Prefect markdown artifact)."""
    lines = [f"# Plan of `{summary['config']}` (config {summary['config_hash'][:12]})", "",
             "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in _totals_rows(summary, est)), ""]
    for label, key in _AXES:
        n = summary["prompts"] or 1
        lines += [f"## Prompts per {label}", "", f"| {label} | prompts | share |", "|---|---:|---:|",
                  *(f"| {v} | {c:,} | {100 * c / n:.1f}% |" for v, c in summary[key].items()), ""]
    if summary.get("sources"):
        lines += ["## Sources of the mixture", "", "| source | kind | share | partitions | holds |", "|---|---|---:|---:|---|",
                  *(f"| {s['name']} | {s['kind']} | {s['share']:.2f} | {s['partitions']:,} | {source_holds(s)} |"
                    for s in summary["sources"]), ""]
    lines += ["## Sources of the figures", "", *(f"- {k}: {v}" for k, v in _sources(summary, est)),
              "- Estimate of the generation stage only: engine load and the record stages come on top.", ""]
    return "\n".join(lines)


def card_section(est: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Dataset-card lines: the estimate beside what the run did, and the cost per 1M kept tokens.

    ``actual`` is run.json ``summary.generation`` plus ``kept_output_tokens`` (output tokens of
    the published records). A run without GPUs gets "CPU run: n/a" for GPU-hours per 1M kept
    tokens and engine-hours per 1M kept tokens instead; a run against an endpoint gets
    :func:`_endpoint_card`.
    """
    if est["device"] == "endpoint":
        return _endpoint_card(est, actual)
    wall = float(actual.get("wall_seconds") or 0.0)
    engines = float(actual.get("engines") or 0)
    gpus = float(actual.get("gpus") or 0)
    kept = int(actual.get("kept_output_tokens") or 0)
    gpu_hours = wall / 3600 * gpus
    engine_hours = wall / 3600 * engines
    rate = actual.get("output_tokens_per_s")
    if rate is None and wall:
        rate = (actual.get("output_tokens") or 0) / wall

    def per_m(hours: float) -> str:
        return f"{hours / kept * 1e6:,.3f}" if kept else "n/a (no kept tokens)"

    est_gpu = est["device"] == "gpu"
    lines = ["## Cost: estimate and actual", "",
             "| | estimate (before the run) | actual |", "|---|---:|---:|",
             f"| generation wall time | {duration(est['wall_seconds'])} | {duration(wall)} |",
             f"| output tokens | {est['expected_output_tokens']:,} | {int(actual.get('output_tokens') or 0):,} |",
             f"| output tok/s | {_rate(est['tokens_per_s'])} | {_rate(float(rate or 0))} |",
             f"| engines | {est['engines']} | {int(engines)} |",
             f"| GPU-hours | {est['gpu_hours']:,.3f} | {gpu_hours:,.3f} |" if est_gpu or gpus else
             "| GPU-hours | 0 (CPU) | 0 (CPU) |",
             f"| engine-hours | {est['engine_hours']:,.3f} | {engine_hours:,.3f} |",
             f"| kept output tokens (published records) | | {kept:,} |",
             f"| GPU-hours per 1M kept tokens | | {per_m(gpu_hours) if gpus else 'CPU run: n/a'} |"]
    if not gpus:
        lines.append(f"| engine-hours per 1M kept tokens | | {per_m(engine_hours)} |")
    lines += ["", f"Throughput of the estimate: {est['source']['detail']}. "
                  f"Tokens per prompt: {est['tokens_source']['detail']}. "
                  "Times are the generation stage's wall clock (run.json `summary.generation`).", ""]
    return lines


def _endpoint_card(est: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """The card's cost lines of a run against an endpoint: wall hours instead of GPU-hours (the
    server's GPUs are not hare's), and, when the estimate recorded prices, money estimated beside
    money actually spent: every generate manifest's prompt and output tokens
    (:func:`manifest_tokens`) at the estimate's prices, the ones the run started with."""
    wall = float(actual.get("wall_seconds") or 0.0)
    kept = int(actual.get("kept_output_tokens") or 0)
    rate = float(actual.get("output_tokens_per_s") or 0.0)
    billed = manifest_tokens(actual)
    priced = est.get("price_per_m_input") is not None or est.get("price_per_m_output") is not None
    spent = token_cost(*billed, est.get("price_per_m_input"), est.get("price_per_m_output")) if billed else None
    lines = ["## Cost: estimate and actual", "",
             f"Generated by {est['served_model']} at {est['endpoint']} (an OpenAI-compatible endpoint): no GPU-hours "
             "are counted, the server's GPUs are not hare's.", "",
             "| | estimate (before the run) | actual |", "|---|---:|---:|",
             f"| generation wall time | {duration(est['wall_seconds'])} | {duration(wall)} |",
             f"| output tokens | {est['expected_output_tokens']:,} | {int(actual.get('output_tokens') or 0):,} |",
             f"| output tok/s at the endpoint | {_rate(est['tokens_per_s'])} | {_rate(rate)} |",
             f"| engines (clients) | {est['engines']} | {int(actual.get('engines') or 0)} |",
             f"| endpoint wall hours | {est['wall_hours']:,.3f} | {wall / 3600:,.3f} |",
             f"| input / output tokens billed (generate manifests, all rounds) | {est['expected_input_tokens']:,} / "
             f"{est['expected_output_tokens']:,} | "
             + (f"{billed[0]:,} / {billed[1]:,} |" if billed else "not recorded |")]
    if priced:
        lines += [f"| money {_prices(est)} | {money(est['cost'])} | {money(spent)} |",
                  f"| kept output tokens (published records) | | {kept:,} |",
                  f"| money per 1M kept tokens | | "
                  + (f"{money(spent / kept * 1e6)} |" if kept and spent is not None else "n/a |")]
    else:
        lines += [f"| kept output tokens (published records) | | {kept:,} |",
                  f"| endpoint wall hours per 1M kept tokens | | "
                  + (f"{wall / 3600 / kept * 1e6:,.3f} |" if kept else "n/a (no kept tokens) |")]
    lines += ["", f"Throughput of the estimate: {est['source']['detail']}. "
                  f"Tokens per prompt: {est['tokens_source']['detail']}. "
                  f"Input tokens: {est['input_tokens_source']['detail']}. "
                  + ("Money is in the currency of model.endpoint's prices. " if priced else
                     "No price was set (model.endpoint.price_per_m_input / price_per_m_output): hours only. ")
                  + "Times are the generation stage's wall clock (run.json `summary.generation`).", ""]
    return lines


# ---------------------------------------------------------------------------------------------
# CLI


def plan_and_estimate(cfg: RunConfig, gpus: float | None = None, *, gpus_per_node: float | None = None,
                      gpu_type: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The plan summary and the estimate, from the earlier runs in the config's store (or the
    defaults, with a warning, when the store cannot be read): what `hare plan` prints and what
    `hare run` shows, keeps in ``plan/estimate.json`` and puts on the card beside the actual."""
    from hare.store import open_store

    store = open_store(cfg.store.url)
    try:
        runs = scan_runs(store)
    except StoreError as exc:  # the plan is still worth printing; say the figures are defaults
        import sys

        print(f"hare: warning: cannot read earlier runs in {store.url}: {exc}; using defaults", file=sys.stderr)
        runs = []
    summary = plan_summary(cfg, runs=runs)
    return summary, estimate(cfg, store, gpus, summary=summary, runs=runs, gpus_per_node=gpus_per_node,
                             gpu_type=gpu_type)


def _cmd_plan(args: argparse.Namespace) -> int:
    from hare.config import load_config

    cfg = load_config(args.config, store_url=args.store)
    check_layout(cfg, args.gpus, args.gpus_per_node)
    summary, est = plan_and_estimate(cfg, args.gpus, gpus_per_node=args.gpus_per_node, gpu_type=args.gpu_type)
    if args.json:
        print(json.dumps({"plan": summary, "estimate": est, "store": cfg.store.url}, indent=2))
    else:
        from rich.console import Console

        Console().print(render_plan(summary, est))
    return 0


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``hare plan CONFIG [--store URL] [--gpus N] [--json]`` to the CLI's subparsers."""
    p = subparsers.add_parser("plan", help="dry run: the plan of a config and what its generation will cost")
    p.add_argument("config", help="run YAML, e.g. configs/demo.yaml")
    p.add_argument("--store", help="store whose earlier runs give measured figures (default: the config's store.url)")
    p.add_argument("--gpus", type=float, help="GPUs of the Ray cluster (engines = GPUs / model.num_gpus "
                                              "when model.replicas is null); default 1 engine")
    p.add_argument("--gpus-per-node", type=float,
                   help="GPUs of each node: engines count whole tensor-parallel groups per node, and a layout "
                        "no node can hold (tensor_parallel_size > GPUs per node) is refused (exit 2)")
    p.add_argument("--gpu-type", choices=gpu_types(), default=None,
                   help=f"GPU of the published throughput figures used when no earlier run measured the model "
                        f"(default {throughput_table()['default_gpu']}; hare/priors/throughput-v1.yaml)")
    p.add_argument("--json", action="store_true", help="print the plan and the estimate as JSON")
    p.set_defaults(fn=_cmd_plan)
    return p
