"""Scale: the whole DAG on N records from the replay backend, per-stage times and peak memory.

    PYTHONPATH=. .venv/bin/python -m bench.scale --records 10000 100000 [--prompts-per-partition 1000]
        [--semantic] [--no-paraphrase] [--out docs/scale.md] [--json bench/results/scale-DATE.json]

For each N, a fresh store and run config in a temporary folder (shipped taxonomy, kinds
``explanation`` and ``textbook``, the replay backend serving ``corpus:pd-prose`` with its planted
2% exact and 2% near copies, one engine with ``model.num_cpus`` 0.5, real quality rules,
decontamination against ``data/benchmarks/gsm8k_test.jsonl``, dedup exact + near, semantic dedup
only with ``--semantic``), then ``hare.flows.synthesize.run_synthesize(config, progress=False)``
in a child process, so that every size starts from a cold Prefect API and Ray.

Measured, from what the run leaves in its store (run.json, the partition manifests, the lineage
events; not from flow internals) and from the processes:

- per stage: first start (manifest ``finished_at`` minus ``stats.seconds``), last commit, and busy
  seconds (sum of ``stats.seconds``), as offsets from run.json ``started_at``; run-level stages
  (plan, diversity, publish) by the time of their lineage COMPLETE event;
- the share of record-stage work (manifests of every stage after generation; by count and by
  busy seconds) committed before the last generation partition committed;
- peak RSS per process: psutil samples the child's whole process tree (the driver, the Prefect
  API it starts, Ray's GCS, raylet and every Ray worker, engine actors included) every 0.5 s;
  reported as the largest single process and the largest simultaneous sum, per role;
- wall time vs N: for consecutive sizes, time ratio and the exponent log(t2/t1) / log(n2/n1)
  (1.0 is linear).

Writes a Markdown table (one row per size, then a per-stage table per size) to ``--out`` and
stdout, and everything to ``--json``. ``--backend deterministic-fake`` exercises the machinery
without the replay backend (its text is no prose: quality rejects it all).

``--corpus`` (HARE's D1: an existing corpus curated, no model): for each N, first (not timed
with the run) a JSONL corpus of N documents in ``--corpus-files`` files, ``{"id", "text"}`` a
line, written by :func:`write_corpus`: the replay backend's texts for prompt indexes 0..N-1
(whole sentences of the paragraphs of ``data/corpus/pd-prose/*.txt``, 3-8 passages from random
places of one document, so no two documents are alike by chance), with its planted 2% exact and
2% near copies of earlier *anchor* documents (hare/backends/replay.py), so dedup has the same
work as in the synthesized runs. The run config then lists ``sources: [{kind: corpus, paths:
[<folder>/corpus/part-*.jsonl], partition_mb}]`` and ``plan.partitions: 0`` (nothing synthesized;
the diversity baseline's 16 prompts still go to one replay engine), the stages set as above.
``partition_mb`` defaults to the corpus bytes of ``--prompts-per-partition`` documents, so a
partition holds about as many records as a synthesized one. The corpus partitions' reads are the
stage ``read`` (their manifests are ``generate`` ones, partition ids ``c*``).

    PYTHONPATH=. .venv-cpu/bin/python -m bench.scale --corpus --records 10000 100000 --no-paraphrase
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import psutil
import yaml

from hare.stages.base import add_counts
from hare.store.manifest import kept_records, rejected_records

ROOT = Path(__file__).resolve().parent.parent
GSM8K = ROOT / "data" / "benchmarks" / "gsm8k_test.jsonl"
RUN_LEVEL_STAGES = ("plan", "diversity", "publish")
ROLES = ("driver", "engine", "embedder", "ray-actor", "ray-worker", "ray-core", "prefect-api", "other")
ACTOR_ROLES = ("engine", "embedder", "ray-actor")
MAX_TOKENS = 400  # 250 words x 1.3 tokens fit: replay answers end with "stop" (a corpus: its documents' cap)

CHILD = """
import json, sys
from hare.flows.synthesize import run_synthesize
summary = run_synthesize(sys.argv[1], progress=False)
print("HARE_SCALE_SUMMARY " + json.dumps(summary, default=str))
"""


# --- the run config ------------------------------------------------------------------------

def run_config(folder: Path, records: int, per: int, args: argparse.Namespace,
               corpus: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    """The run config of one size; with ``corpus`` (what :func:`write_corpus` wrote), a run of
    that corpus alone: ``sources: [{kind: corpus}]`` and ``plan.partitions: 0``."""
    per = min(per, records)
    partitions = 0 if corpus else math.ceil(records / per)
    source = args.source
    if args.tokens_per_s:  # pace the replay engine like a real one
        source += ("&" if "?" in source else "?") + f"tokens_per_s={args.tokens_per_s:g}"
    cfg: dict[str, Any] = {
        "name": f"scale-{records}",
        "seed": args.seed,
        "axes": {"kinds": args.kinds},
        "plan": {"partitions": partitions, "prompts_per_partition": per},
        "model": {"name": "replay", "source": source, "backend": args.backend,
                  "replicas": args.engines, "num_cpus": args.engine_cpus, "num_gpus": 0},
        "sampling": {"max_tokens": MAX_TOKENS},
        "diversity": {"baseline_prompts": 16},
        "quality": {"enabled": True},
        "decontamination": {
            "benchmarks": [{"name": "gsm8k", "source": str(GSM8K), "fields": ["question", "answer"]}],
            "paraphrase": not args.no_paraphrase,
        },
        "dedup": {"enabled": True, "exact": True, "near": True, "semantic": args.semantic},
        "store": {"url": str(folder / "store")},
    }
    if corpus:
        cfg["sources"] = [{"kind": "corpus", "name": "pd-prose-corpus", "paths": [corpus["glob"]],
                           "license": "public-domain", "partition_mb": corpus["partition_mb"]}]
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path, cfg


# --- the corpus of --corpus ----------------------------------------------------------------

def write_corpus(folder: Path, documents: int, files: int = 4, seed: int = 0, source: str = "corpus:pd-prose",
                 max_words: int | None = None, per_partition: int = 1000,
                 partition_mb: float | None = None) -> dict[str, Any]:
    """``documents`` JSONL lines ``{"id", "text"}`` in ``files`` files ``folder/part-*.jsonl``
    (consecutive ranges of documents), the replay backend's text of prompt index i (its seed from
    ``seed``) as document i: real prose, varied per document, with the replay's planted exact and
    near copies of earlier anchor documents. Streamed to disk (a million documents are ~0.8 GB).

    Returns the glob, files, bytes, the planted counts (by replay role: anchor / exact / near /
    unique) and ``partition_mb``: given, or the bytes of ``per_partition`` documents on average."""
    from hare.backends.replay import Replayer, load_corpus, parse_source, request_seed

    location, options = parse_source(source)
    replayer = Replayer(load_corpus(location, options.mode, options.column), options)
    folder.mkdir(parents=True, exist_ok=True)
    files = max(1, min(files, documents))
    started = time.perf_counter()
    planted = {"anchor": 0, "exact": 0, "near": 0, "unique": 0}
    paths, total = [], 0
    for f in range(files):
        lo, hi = documents * f // files, documents * (f + 1) // files
        path = folder / f"part-{f:04d}.jsonl"
        with path.open("w", encoding="utf-8") as out:
            for i in range(lo, hi):
                s = request_seed(seed, i)
                planted[replayer.role(i, s)[0]] += 1
                out.write(json.dumps({"id": f"doc-{i:08d}", "text": replayer.text(i, s, max_words)},
                                     ensure_ascii=False) + "\n")
        paths.append(str(path))
        total += path.stat().st_size
    if partition_mb is None:
        partition_mb = max(0.001, round(total / documents * min(per_partition, documents) / (1 << 20), 3))
    return {"glob": str(folder / "part-*.jsonl"), "files": paths, "documents": documents, "bytes": total,
            "mean_bytes_per_document": round(total / documents, 1), "planted": planted,
            "partition_mb": partition_mb, "write_seconds": round(time.perf_counter() - started, 2),
            "source": source, "seed": seed}


# --- process sampling ----------------------------------------------------------------------

def role_of(cmdline: str, pid: int, driver: int) -> str:
    if pid == driver:
        return "driver"
    if cmdline.startswith("ray::"):  # Ray sets a worker's title to what it runs
        if "EngineActor" in cmdline:
            return "engine"
        if "EmbedderActor" in cmdline:
            return "embedder"
        return "ray-actor" if re.search(r"[A-Za-z]Actor\b", cmdline) else "ray-worker"
    if any(k in cmdline for k in ("gcs_server", "raylet", "dashboard", "log_monitor", "monitor.py",
                                  "runtime_env", "ray/_private", "ray.util.client", "default_worker.py")):
        return "ray-core" if "default_worker.py" not in cmdline else "ray-worker"
    if "prefect" in cmdline or "uvicorn" in cmdline:
        return "prefect-api"
    return "other"


class Sampler(threading.Thread):
    """RSS of every process under ``root`` every ``interval`` seconds, until stopped."""

    def __init__(self, root: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.procs: dict[int, dict[str, Any]] = {}  # pid -> role, titles, max_rss, cpu_s
        self.role_sum_peak = {r: 0 for r in ROLES}
        self.total_peak = 0
        self.samples = 0
        self.errors: list[str] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.sample()
            except Exception as exc:  # noqa: BLE001 - a sampling bug must not lose the run
                self.errors.append(repr(exc))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)

    def sample(self) -> None:
        try:
            root = psutil.Process(self.root)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        sums = {r: 0 for r in ROLES}
        for p in procs:
            try:
                with p.oneshot():
                    rss = p.memory_info().rss
                    cmd = " ".join(p.cmdline()) or p.name()
                    cpu = p.cpu_times()
            except psutil.Error:
                continue
            info = self.procs.setdefault(p.pid, {"role": None, "titles": [], "max_rss": 0, "cpu_s": 0.0})
            role = role_of(cmd, p.pid, self.root)
            if info["role"] in (None, "other") or (info["role"] == "ray-worker" and role in ACTOR_ROLES):
                # a Ray worker process may turn into an actor; a process first seen between fork
                # and exec (the driver's command line) gets the role of what it runs
                info["role"] = role
            title = cmd[:80]
            if title not in info["titles"] and len(info["titles"]) < 6:
                info["titles"].append(title)
            info["max_rss"] = max(info["max_rss"], rss)
            info["cpu_s"] = max(info["cpu_s"], cpu.user + cpu.system)
            sums[info["role"]] += rss
        self.samples += 1
        for r, v in sums.items():
            self.role_sum_peak[r] = max(self.role_sum_peak[r], v)
        self.total_peak = max(self.total_peak, sum(sums.values()))

    def report(self) -> dict[str, Any]:
        mib = 1 << 20
        roles: dict[str, Any] = {}
        for r in ROLES:
            ps = [p for p in self.procs.values() if p["role"] == r]
            if ps:
                roles[r] = {"processes": len(ps), "max_process_rss_mib": round(max(p["max_rss"] for p in ps) / mib, 1),
                            "max_simultaneous_rss_mib": round(self.role_sum_peak[r] / mib, 1),
                            "cpu_s": round(sum(p["cpu_s"] for p in ps), 1)}
        top = sorted(self.procs.items(), key=lambda kv: -kv[1]["max_rss"])
        return {"samples": self.samples, "interval_s": self.interval, "sampling_errors": self.errors[:5],
                "total_simultaneous_rss_mib": round(self.total_peak / mib, 1), "roles": roles,
                "processes": [{"pid": pid, "role": p["role"], "max_rss_mib": round(p["max_rss"] / mib, 1),
                             "cpu_s": round(p["cpu_s"], 1), "titles": p["titles"]} for pid, p in top]}


# --- reading the run -----------------------------------------------------------------------

def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def read_run(store: Path) -> tuple[Path, dict[str, Any]]:
    runs = sorted((store / "runs").glob("*/run.json"))
    if len(runs) != 1:
        raise RuntimeError(f"expected one run in {store}, found {len(runs)}")
    return runs[0].parent, json.loads(runs[0].read_text())


def stage_figures(run_dir: Path, info: dict[str, Any]) -> dict[str, Any]:
    start = ts(info["started_at"])
    manifests = []
    for p in sorted((run_dir / "partitions").glob("*.json")):
        try:
            m = json.loads(p.read_text())
        except ValueError:
            continue
        if isinstance(m, dict) and m.get("status") == "succeeded" and "stage" in m and "finished_at" in m:
            manifests.append(m)
    stages: dict[str, dict[str, Any]] = {}
    for m in manifests:  # a corpus partition's read, committed as its "generation" (tasks/corpus.py)
        if m["stage"] == "generate" and (m.get("stats") or {}).get("backend") == "corpus":
            m["stage"] = "read"
    for m in manifests:
        end = (ts(m["finished_at"]) - start).total_seconds()
        stats = m.get("stats") or {}
        secs = float(stats.get("seconds") or 0.0)
        s = stages.setdefault(m["stage"], {"kind": "partition", "partitions": 0, "start_s": math.inf,
                                           "end_s": -math.inf, "busy_s": 0.0, "records_in": 0, "records_out": 0,
                                           "rejects": 0, "reject_reasons": {}})
        s["partitions"] += 1
        s["start_s"] = min(s["start_s"], end - secs)
        s["end_s"] = max(s["end_s"], end)
        s["busy_s"] += secs
        # every commit carries the base counts (hare/stages/base.py: checked / kept / rejected /
        # reject_reasons); kept_records and rejected_records also read earlier runs' names
        kept, rejected = kept_records(stats), rejected_records(stats)
        s["records_in"] += int(stats.get("checked", kept + rejected))
        s["records_out"] += kept
        s["rejects"] += rejected
        add_counts(s["reject_reasons"], stats.get("reject_reasons") or {})
    dedup = stages.get("dedup")
    if dedup:  # its rejects by layer: the reasons are duplicate:<layer> (Dedup.report's by_layer)
        dedup["dropped_by_layer"] = {k.removeprefix("duplicate:"): v for k, v in sorted(dedup["reject_reasons"].items())}
    for s in stages.values():
        for k in ("start_s", "end_s", "busy_s"):
            s[k] = round(s[k], 2)
        s["span_s"] = round(s["end_s"] - s["start_s"], 2)
    for stage in RUN_LEVEL_STAGES:  # lineage COMPLETE events of run-level stages
        event = run_dir / "lineage" / f"synthesize.{stage}.complete.json"
        if event.is_file() and stage not in stages:
            t = json.loads(event.read_text()).get("eventTime")
            if t:
                stages[stage] = {"kind": "run", "end_s": round((ts(t) - start).total_seconds(), 2)}
    report = run_dir / "diversity.json"  # no lineage event: when its report was written (a local store)
    if "diversity" not in stages and report.is_file():
        written = datetime.fromtimestamp(report.stat().st_mtime, timezone.utc)
        stages["diversity"] = {"kind": "run", "end_s": round((written - start).total_seconds(), 2),
                               "from": "diversity.json mtime"}
    # streaming: record-stage work committed before the last generation (or corpus read) partition
    ends = [stages[s]["end_s"] for s in ("generate", "read") if s in stages]
    gen_end = max(ends) if ends else None
    later = [m for m in manifests if m["stage"] not in ("generate", "read")]
    early = [m for m in later if gen_end is not None and (ts(m["finished_at"]) - start).total_seconds() <= gen_end]
    busy = sum(float((m.get("stats") or {}).get("seconds") or 0.0) for m in later)
    busy_early = sum(float((m.get("stats") or {}).get("seconds") or 0.0) for m in early)
    streaming = {
        "record_stage_manifests": len(later),
        "before_last_generate_commit": len(early),
        "share_by_count": round(len(early) / len(later), 3) if later else None,
        "share_by_busy_seconds": round(busy_early / busy, 3) if busy else None,
        "run_json": (info.get("summary") or {}).get("streaming"),
    }
    return {"stages": dict(sorted(stages.items(), key=lambda kv: kv[1].get("end_s", 0))), "streaming": streaming}


# --- one size ------------------------------------------------------------------------------

def child_env(folder: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    for k, v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                 "RAY_AUTH_MODE": "disabled", "HARE_CACHE_DIR": str(ROOT / ".hare" / "cache"),
                 "PREFECT_HOME": str(ROOT / ".hare" / "prefect")}.items():
        env.setdefault(k, v)
    return env


def run_size(records: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    folder = work / f"n{records}"
    folder.mkdir(parents=True, exist_ok=True)
    corpus = None
    if args.corpus:
        corpus = write_corpus(folder / "corpus", records, args.corpus_files, args.seed, args.source,
                              max_words=math.floor(MAX_TOKENS / 1.3), per_partition=args.prompts_per_partition,
                              partition_mb=args.partition_mb)
        print(f"[scale] corpus of {records} documents: {corpus['bytes'] / (1 << 20):.1f} MiB in "
              f"{len(corpus['files'])} files, written in {corpus['write_seconds']} s; planted {corpus['planted']}",
              flush=True)
    config_path, cfg = run_config(folder, records, args.prompts_per_partition, args, corpus)
    log = folder / "run.log"
    if corpus:
        print(f"[scale] {records} corpus documents, partition_mb {corpus['partition_mb']}, log {log}", flush=True)
    else:
        print(f"[scale] {records} records: {cfg['plan']['partitions']} x {cfg['plan']['prompts_per_partition']} "
              f"prompts, log {log}", flush=True)
    started = time.perf_counter()
    with log.open("w") as out:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(config_path)], stdout=out, stderr=subprocess.STDOUT,
                                 env=child_env(folder), cwd=ROOT)
        sampler = Sampler(child.pid, args.interval)
        sampler.start()
        try:
            rc = child.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            child.terminate()
            rc = child.wait(timeout=60)
        finally:
            sampler.stop()
    wall = time.perf_counter() - started
    text = log.read_text(errors="replace")
    if rc != 0 or "HARE_SCALE_SUMMARY " not in text:
        raise RuntimeError(f"run of {records} records failed (exit {rc}); last lines of {log}:\n"
                           + "\n".join(text.splitlines()[-30:]))
    run_dir, info = read_run(folder / "store")
    run_wall = (ts(info["finished_at"]) - ts(info["started_at"])).total_seconds()
    summary = info.get("summary") or {}
    figures = stage_figures(run_dir, info)
    partitions = figures["stages"].get("read", {}).get("partitions", 0) if corpus else cfg["plan"]["partitions"]
    return {
        "records": records, "planned_prompts": cfg["plan"]["partitions"] * cfg["plan"]["prompts_per_partition"],
        "partitions": partitions, "prompts_per_partition": cfg["plan"]["prompts_per_partition"],
        "run_id": info["run_id"], "status": info.get("status"), "code_version": info.get("code_version"),
        "run_wall_s": round(run_wall, 2), "process_wall_s": round(wall, 2),
        "published_records": summary.get("records"), "rejects": summary.get("rejects"),
        **figures, "memory": sampler.report(),
        **({"corpus": {k: v for k, v in corpus.items() if k != "files"} | {"files": len(corpus["files"])}}
           if corpus else {}),
        "summary": summary, "config": cfg,
    }


# --- report --------------------------------------------------------------------------------

def scaling(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    rs = sorted(results, key=lambda r: r["records"])
    for a, b in zip(rs, rs[1:]):
        n, t = b["records"] / a["records"], b["run_wall_s"] / a["run_wall_s"]
        out.append({"from": a["records"], "to": b["records"], "records_ratio": round(n, 2), "time_ratio": round(t, 2),
                    "exponent": round(math.log(t) / math.log(n), 2) if n > 1 and t > 0 else None})
    return out


def memory_scaling(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per role, the largest single process's peak RSS at each size and last / first: flat in N
    is a ratio near 1 (a process holding what grows with N shows it here)."""
    rs = sorted(results, key=lambda r: r["records"])
    out: dict[str, Any] = {"records": [r["records"] for r in rs]}
    for role in ROLES:
        peaks = [r["memory"]["roles"].get(role, {}).get("max_process_rss_mib") for r in rs]
        if any(v is not None for v in peaks):
            out[role] = {"max_process_rss_mib": peaks,
                         "last_over_first": round(peaks[-1] / peaks[0], 2) if peaks[0] and peaks[-1] else None}
    totals = [r["memory"]["total_simultaneous_rss_mib"] for r in rs]
    out["all"] = {"total_simultaneous_rss_mib": totals,
                  "last_over_first": round(totals[-1] / totals[0], 2) if totals and totals[0] else None}
    return out


def fmt_stage(s: dict[str, Any] | None) -> str:
    if not s:
        return "-"
    if s["kind"] == "run":
        return f"+{s['end_s']:.0f}"
    return f"{s['start_s']:.0f}→{s['end_s']:.0f} ({s['busy_s']:.0f})"


def fmt_memory(memory: dict[str, Any]) -> str:
    """Largest single process per role; for Ray workers and core also the largest simultaneous sum."""
    roles, parts = memory["roles"], []
    for role in ROLES:
        if role not in roles:
            continue
        one, total = roles[role]["max_process_rss_mib"], roles[role]["max_simultaneous_rss_mib"]
        n = roles[role]["processes"]
        parts.append(f"{role} {one:.0f}" + (f" (x{n}, sum {total:.0f})" if n > 1 else ""))
    parts.append(f"all {memory['total_simultaneous_rss_mib']:.0f}")
    return ", ".join(parts)


def markdown(results: list[dict[str, Any]], scale: list[dict[str, Any]]) -> str:
    stage_names: list[str] = []
    for r in results:
        for s in r["stages"]:
            if s not in stage_names:
                stage_names.append(s)
    order = {s: i for i, s in enumerate(["plan", "read", "generate", "quality", "decontam", "features", "dedup",
                                         "diversity", "publish"])}
    stage_names.sort(key=lambda s: order.get(s, 50))
    by_n = {x["to"]: x for x in scale}
    head = (["records", "partitions", "published", "run wall (s)"] + stage_names
            + ["dropped: quality / decontam / dedup (by layer)",
               "record-stage work done before the last " + ("corpus read" if "read" in stage_names else "generate")
               + " commit (count / busy s)",
               "peak RSS MiB", "time vs previous size"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(results, key=lambda r: r["records"]):
        st, stages = r["streaming"], r["stages"]
        share = (f"{st['share_by_count']:.0%} / {st['share_by_busy_seconds']:.0%}"
                 if st["share_by_count"] is not None and st["share_by_busy_seconds"] is not None else "-")
        layers = stages.get("dedup", {}).get("dropped_by_layer") or {}
        dropped = " / ".join(str(stages.get(s, {}).get("rejects", "-")) for s in ("quality", "decontam", "dedup"))
        if layers:
            dropped += " (" + ", ".join(f"{k} {v}" for k, v in sorted(layers.items())) + ")"
        sc = by_n.get(r["records"])
        vs = (f"{sc['records_ratio']:g}x records → {sc['time_ratio']:g}x time (exponent {sc['exponent']})"
              if sc else "-")
        row = ([f"{r['records']:,}", str(r["partitions"]), f"{r['published_records']:,}", f"{r['run_wall_s']:.0f}"]
               + [fmt_stage(stages.get(s)) for s in stage_names] + [dropped, share, fmt_memory(r["memory"]), vs])
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append("Stage cells: first start → last commit, seconds from run.json `started_at` (busy seconds "
                 "summed over partitions); run-level stages: `+s`, when they finished (lineage COMPLETE "
                 "event; diversity: its report written). Peak RSS: the largest process of each role (with "
                 "several processes, the largest simultaneous sum), `all`: the whole process tree at its peak.")
    return "\n".join(lines)


CODE_FILES = ("tasks/corpus.py", "hare/priors/corpus.py", "flows/streaming.py", "flows/synthesize.py",
              "tasks/dedup.py", "tasks/stages.py", "hare/store/manifest.py")


def code_files() -> dict[str, str]:
    """sha256 (12 hex digits) of the files a corpus run depends on most, at the bench's start."""
    import hashlib

    return {f: hashlib.sha256((ROOT / f).read_bytes()).hexdigest()[:12] for f in CODE_FILES if (ROOT / f).is_file()}


def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / (1 << 30), 1), "node": platform.node()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, nargs="+", default=[10_000])
    p.add_argument("--prompts-per-partition", type=int, default=1000)
    p.add_argument("--semantic", action="store_true", help="semantic (embedding) dedup too")
    p.add_argument("--no-paraphrase", action="store_true", help="n-gram decontamination only (no embedding search)")
    p.add_argument("--backend", default="replay", choices=["replay", "deterministic-fake"])
    p.add_argument("--source", default="corpus:pd-prose", help="model.source of the replay backend")
    p.add_argument("--tokens-per-s", type=float, default=0.0,
                   help="pace each replay engine at this output throughput (default: as fast as it can)")
    p.add_argument("--kinds", nargs="+", default=["explanation", "textbook"])
    p.add_argument("--engines", type=int, default=1)
    p.add_argument("--engine-cpus", type=float, default=0.5, help="model.num_cpus")
    p.add_argument("--corpus", action="store_true",
                   help="curate a corpus of N documents (sources: kind corpus, plan.partitions 0), no synthesis")
    p.add_argument("--corpus-files", type=int, default=4, help="--corpus: files the corpus is written in")
    p.add_argument("--partition-mb", type=float,
                   help="--corpus: sources[].partition_mb (default: the bytes of --prompts-per-partition documents)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--interval", type=float, default=0.5, help="seconds between RSS samples")
    p.add_argument("--timeout", type=float, default=6 * 3600, help="seconds per size")
    p.add_argument("--work-dir", help="where the stores go (default: a temporary folder, removed)")
    p.add_argument("--keep", action="store_true", help="keep the stores")
    p.add_argument("--out", help="Markdown file to write the tables to")
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / f"scale-{date.today().isoformat()}.json"))
    p.add_argument("--merge", metavar="JSON", nargs="+",
                   help=("earlier results files of the same mode whose sizes join this run's in the report and "
                         "its scaling (a size run here wins); their provenance goes under merged_from"))
    p.add_argument("--render", metavar="JSON", nargs="+",
                   help="only print the tables of earlier results (sizes of several JSON files merged)")
    args = p.parse_args()
    if args.render:
        sizes = [r for f in args.render for r in json.loads(Path(f).read_text())["sizes"]]
        print(markdown(sizes, scaling(sizes)))
        return

    from bench.provenance import provenance

    prov = provenance()  # at the start: the machine's load average before the runs
    prov["code_files"] = code_files()  # other sessions edit the tree while a run goes: which code ran
    earlier = [(f, json.loads(Path(f).read_text())) for f in args.merge or []]
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="hare-scale-"))
    results = []
    try:
        for n in args.records:
            results.append(run_size(n, args, work))
            r = results[-1]
            print(f"[scale] {n} records: run wall {r['run_wall_s']} s, process {r['process_wall_s']} s, "
                  f"published {r['published_records']}", flush=True)
    finally:
        if not args.keep and not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    mode = "corpus" if args.corpus else "synthesize"
    merged_from = []
    for f, doc in earlier:
        if doc.get("mode", "synthesize") != mode:
            raise SystemExit(f"--merge {f}: a {doc.get('mode', 'synthesize')} run, this is a {mode} run")
        here = {r["records"] for r in results}
        taken = [dict(r, results_of=f) for r in doc["sizes"] if r["records"] not in here]
        results += taken
        merged_from.append({"file": f, "sizes": [r["records"] for r in taken],
                            **{k: doc.get(k) for k in ("date", "started_at", "command", "git_revision", "machine")}})
    results.sort(key=lambda r: r["records"])
    scale = scaling(results)
    md = markdown(results, scale)
    print(md)
    report = {"bench": "scale", "mode": mode, **prov, "platform": machine(),
              "sizes": results, "scaling": scale, "memory_scaling": memory_scaling(results),
              **({"merged_from": merged_from} if merged_from else {})}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"[scale] JSON: {args.json}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(md + "\n")
        print(f"[scale] Markdown: {args.out}")


if __name__ == "__main__":
    main()
