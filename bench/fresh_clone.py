"""Set-up, demo and tests from a fresh clone, timed: the figures of README's set-up table.

    PYTHONPATH=. .venv-cpu/bin/python -m bench.fresh_clone [--rev HEAD] [--work /tmp/hare-fresh-clone]
        [--json bench/results/fresh-clone-DATE.json] [--steps venv demo test]

What a new user (and `.ci/run`) does, step by step, each timed on its own: ``git clone`` of
this repository at ``--rev`` (committed files only) into ``--work``, then in the clone with
``CI=true`` and an empty ``PREFECT_HOME``: ``make venv`` (the set-up), ``make demo`` (on the new
Prefect database), ``make test`` (the whole suite, ``-q -rs``). Writes the wall time of each
step and of all, their exit codes, the demo run's summary (bench/run_summary.py on the clone's
store, and run.json's ``summary``) and the pytest counts from its last line (passed, failed,
xfailed, skipped ...) into the results file, with bench/provenance.py's fields (the git
revision is the clone's). Logs of each step: ``--work``/logs/. Takes about 30 minutes on the
2-core CPU machine (pip's cache warm); nothing else should run beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STEPS = ("venv", "demo", "test")
COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected|warnings?)")


def pytest_counts(output: str) -> dict[str, int]:
    """The counts of pytest's last summary line (``429 passed, 1 xfailed in 1262.1s``)."""
    lines = [ln for ln in output.splitlines() if re.search(r"\b(passed|failed|error|errors)\b.* in [0-9.]+s", ln)]
    if not lines:
        return {}
    counts: dict[str, int] = {}
    for n, what in COUNT.findall(lines[-1]):
        key = {"error": "errors", "warning": "warnings"}.get(what, what)
        counts[key] = counts.get(key, 0) + int(n)
    return counts


def minutes(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s"


def run_step(name: str, cmd: list[str], cwd: Path, env: dict[str, str], logs: Path) -> dict[str, Any]:
    log = logs / f"{name}.log"
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.run(cmd, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - t0
    out = {"command": shlex.join(cmd), "seconds": round(seconds, 1), "wall": minutes(seconds), "exit_code": rc,
           "log": str(log)}
    print(f"[fresh-clone] {name}: {out['wall']}, exit {rc}", flush=True)
    return out


def demo_summary(clone: Path) -> dict[str, Any]:
    """The newest demo run of the clone's store: bench/run_summary.py's figures and run.json's summary."""
    runs = sorted((clone / ".hare" / "store" / "runs").glob("*/run.json"), key=lambda p: p.stat().st_mtime)
    if not runs:
        return {}
    info = json.loads(runs[-1].read_text())
    run_id = runs[-1].parent.name
    out: dict[str, Any] = {"run_id": run_id, "status": info.get("status"), "summary": info.get("summary")}
    try:
        from bench.run_summary import summarize

        out["run_summary"] = summarize(str(clone / ".hare" / "store"), run_id)
    except Exception as exc:  # noqa: BLE001 - the timings stay worth recording
        out["run_summary_error"] = f"{type(exc).__name__}: {exc}"
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rev", default="HEAD", help="the commit to clone (committed files only)")
    p.add_argument("--work", default="/tmp/hare-fresh-clone", help="emptied first")
    p.add_argument("--json", default=None, help="default: bench/results/fresh-clone-DATE.json")
    p.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    args = p.parse_args()

    from bench.provenance import provenance

    work = Path(args.work)
    if work.exists():
        shutil.rmtree(work)
    clone, logs = work / "hare", work / "logs"
    logs.mkdir(parents=True)
    result: dict[str, Any] = {**provenance(), "bench": "fresh_clone"}
    t0 = time.perf_counter()
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", args.rev], capture_output=True, text=True,
                         check=True).stdout.strip()
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(ROOT), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "checkout", "--quiet", rev], check=True)
    result["git_revision"] = rev  # what ran: the clone, not this (possibly modified) checkout
    result["clone_seconds"] = round(time.perf_counter() - t0, 1)
    result["tools"] = {t: shutil.which(t) for t in ("bwrap", "chromium")}
    result["pip_cache_present"] = (Path.home() / ".cache" / "pip").is_dir()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "RAY_", "HARE_", "VIRTUAL_ENV")) and k != "PYTHONPATH"}
    env.update({"CI": "true", "PYTHONUNBUFFERED": "1"})
    steps: dict[str, Any] = {}
    commands = {"venv": ["make", "venv"], "demo": ["make", "demo"], "test": ["make", "test", "PYTEST_ARGS=-q -rs"]}
    for name in STEPS:
        if name in args.steps:
            steps[name] = run_step(name, commands[name], clone, env, logs)
    result["steps"] = steps
    if "demo" in steps:
        result["demo"] = demo_summary(clone)
    if "test" in steps:
        result["tests"] = pytest_counts((logs / "test.log").read_text(errors="replace"))
    total = time.perf_counter() - t0
    result["total_seconds"] = round(total, 1)
    result["total_wall"] = minutes(total)
    dest = Path(args.json or ROOT / "bench" / "results" / f"fresh-clone-{result['date']}.json")
    dest.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("git_revision", "total_wall") if k in result} | {"tests": result.get("tests")}))
    print(f"-> {dest}")
    sys.exit(max((s["exit_code"] for s in steps.values()), default=0))


if __name__ == "__main__":
    main()
