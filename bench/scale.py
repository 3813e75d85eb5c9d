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

ROOT = Path(__file__).resolve().parent.parent
GSM8K = ROOT / "data" / "benchmarks" / "gsm8k_test.jsonl"
RUN_LEVEL_STAGES = ("plan", "diversity", "publish")
ROLES = ("driver", "engine", "embedder", "ray-actor", "ray-worker", "ray-core", "prefect-api", "other")
ACTOR_ROLES = ("engine", "embedder", "ray-actor")

CHILD = """
import json, sys
from hare.flows.synthesize import run_synthesize
summary = run_synthesize(sys.argv[1], progress=False)
print("HARE_SCALE_SUMMARY " + json.dumps(summary, default=str))
"""


# --- the run config ------------------------------------------------------------------------

def run_config(folder: Path, records: int, per: int, args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    per = min(per, records)
    partitions = math.ceil(records / per)
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
        "sampling": {"max_tokens": 400},  # 250 words x 1.3 tokens fit: replay answers end with "stop"
        "diversity": {"baseline_prompts": 16},
        "quality": {"enabled": True},
        "decontamination": {
            "benchmarks": [{"name": "gsm8k", "source": str(GSM8K), "fields": ["question", "answer"]}],
            "paraphrase": not args.no_paraphrase,
        },
        "dedup": {"enabled": True, "exact": True, "near": True, "semantic": args.semantic},
        "store": {"url": str(folder / "store")},
    }
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path, cfg


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
            if info["role"] is None or (info["role"] == "ray-worker" and role in ACTOR_ROLES):
                info["role"] = role  # a Ray worker process may turn into an actor
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
    for m in manifests:
        end = (ts(m["finished_at"]) - start).total_seconds()
        secs = float((m.get("stats") or {}).get("seconds") or 0.0)
        s = stages.setdefault(m["stage"], {"kind": "partition", "partitions": 0, "start_s": math.inf,
                                           "end_s": -math.inf, "busy_s": 0.0, "records_in": 0, "records_out": 0,
                                           "rejects": 0})
        s["partitions"] += 1
        s["start_s"] = min(s["start_s"], end - secs)
        s["end_s"] = max(s["end_s"], end)
        s["busy_s"] += secs
        stats = m.get("stats") or {}
        for key, field in (("records_in", "checked"), ("records_in", "requests"), ("records_out", "records"),
                           ("rejects", "rejects")):
            if isinstance(stats.get(field), int):
                s[key] += stats[field]
        layers = (stats.get("aggregate") or {}).get("layers") if isinstance(stats.get("aggregate"), dict) else None
        if isinstance(layers, dict):  # dedup: records dropped per layer
            by_layer = s.setdefault("dropped_by_layer", {})
            for layer, n in layers.items():
                if isinstance(n, int):
                    by_layer[layer] = by_layer.get(layer, 0) + n
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
    # streaming: record-stage work committed before the last generation partition
    gen_end = stages.get("generate", {}).get("end_s")
    later = [m for m in manifests if m["stage"] != "generate"]
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
    config_path, cfg = run_config(folder, records, args.prompts_per_partition, args)
    log = folder / "run.log"
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
    return {
        "records": records, "planned_prompts": cfg["plan"]["partitions"] * cfg["plan"]["prompts_per_partition"],
        "partitions": cfg["plan"]["partitions"], "prompts_per_partition": cfg["plan"]["prompts_per_partition"],
        "run_id": info["run_id"], "status": info.get("status"), "code_version": info.get("code_version"),
        "run_wall_s": round(run_wall, 2), "process_wall_s": round(wall, 2),
        "published_records": summary.get("records"), "rejects": summary.get("rejects"),
        **stage_figures(run_dir, info), "memory": sampler.report(),
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
    order = {s: i for i, s in enumerate(["plan", "generate", "quality", "decontam", "features", "dedup",
                                         "diversity", "publish"])}
    stage_names.sort(key=lambda s: order.get(s, 50))
    by_n = {x["to"]: x for x in scale}
    head = (["records", "partitions", "published", "run wall (s)"] + stage_names
            + ["dropped: quality / decontam / dedup (by layer)",
               "record-stage work done before the last generate commit (count / busy s)",
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--interval", type=float, default=0.5, help="seconds between RSS samples")
    p.add_argument("--timeout", type=float, default=6 * 3600, help="seconds per size")
    p.add_argument("--work-dir", help="where the stores go (default: a temporary folder, removed)")
    p.add_argument("--keep", action="store_true", help="keep the stores")
    p.add_argument("--out", help="Markdown file to write the tables to")
    p.add_argument("--json", default=str(ROOT / "bench" / "results" / f"scale-{date.today().isoformat()}.json"))
    p.add_argument("--render", metavar="JSON", nargs="+",
                   help="only print the tables of earlier results (sizes of several JSON files merged)")
    args = p.parse_args()
    if args.render:
        sizes = [r for f in args.render for r in json.loads(Path(f).read_text())["sizes"]]
        print(markdown(sizes, scaling(sizes)))
        return

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
    scale = scaling(results)
    md = markdown(results, scale)
    print(md)
    from bench.provenance import git_revision

    report = {"bench": "scale", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "command": " ".join([Path(sys.executable).name, "-m", "bench.scale", *sys.argv[1:]]),
              "git_revision": git_revision(), "machine": machine(), "sizes": results, "scaling": scale}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"[scale] JSON: {args.json}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(md + "\n")
        print(f"[scale] Markdown: {args.out}")


if __name__ == "__main__":
    main()
