"""Bad input to the ``hare`` command is one line on stderr and exit code 2, never a traceback
(issue 23): each case is what a new user tried, run as they run it (``python -m hare.cli``).

Config files that are not UTF-8 or not parseable, a ``--store`` that names a file, a JSON
input nested past the parser's recursion limit, and config values too big to run (a plan of
10^10 prompts, an engine of 10^12 sequences) that used to be accepted and die later.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hare.config import MAX_PLANNED_PROMPTS
from tests.conftest import write_run_config
from tests.procs import hare_env

DEEP = "[" * 100_000  # a RecursionError in json and in PyYAML before issue 23


def hare(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``hare ARGS`` in ``cwd``, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "hare.cli", *args], cwd=cwd, env=hare_env(),
                          capture_output=True, text=True, timeout=300)


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The non-empty stderr lines of a refused command, after checking it was refused cleanly."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr + result.stdout, result.stderr[-2000:]
    return [line for line in result.stderr.splitlines() if line.strip()]


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a command refused as issue 23 asks."""
    lines = error_lines(result)
    assert len(lines) == 1, lines
    assert lines[0].startswith("hare: error: "), lines
    return lines[0]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_run_config(tmp_path)


@pytest.mark.parametrize("command", ["plan", "run"])
def test_a_config_that_is_not_utf8(tmp_path: Path, config: Path, command: str) -> None:
    config.write_bytes(b"# caf\xe9 in Latin-1\n" + config.read_bytes())
    line = one_error_line(hare(command, str(config), cwd=tmp_path))
    assert str(config) in line and "not UTF-8" in line and "byte 0xe9 at offset 5" in line
    assert not (tmp_path / "store").exists()  # refused before anything was written


@pytest.mark.parametrize(("text", "says"), [
    ("a: " + DEEP, "nested too deeply"),
    ("name: t\nplan: [1, 2\nseed: 3\n", "not valid YAML: expected ',' or ']', but got ':' at line 3, column 5"),
], ids=["nested", "malformed"])
def test_a_config_that_is_not_usable_yaml(tmp_path: Path, config: Path, text: str, says: str) -> None:
    config.write_text(text)
    line = one_error_line(hare("plan", str(config), cwd=tmp_path))
    assert str(config) in line and says in line


@pytest.mark.parametrize(("command", "store"), [
    (["status", "r1"], "notes.txt"), (["verify", "r1"], "notes.txt"), (["index", "show"], "notes.txt"),
    (["run", "CONFIG"], "notes.txt"), (["view"], "notes.txt"), (["status", "r1"], "notes.txt/store"),
], ids=["status", "verify", "index-show", "run", "view", "status-path-under-a-file"])
def test_a_store_that_is_a_file(tmp_path: Path, config: Path, command: list[str], store: str) -> None:
    (tmp_path / "notes.txt").write_text("not a store\n")
    args = [str(config) if a == "CONFIG" else a for a in command]
    line = one_error_line(hare(*args, "--store", store, cwd=tmp_path))
    assert f"--store {store}: {tmp_path / 'notes.txt'} is a file, not a folder" in line
    assert (tmp_path / "notes.txt").read_text() == "not a store\n"


def test_dedup_against_a_file(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text('{"text": "one two three four five six"}\n')
    (tmp_path / "index.txt").write_text("x")
    line = one_error_line(hare("dedup", "in.jsonl", "--out", "out.jsonl", "--against", "index.txt", cwd=tmp_path))
    assert "--against index.txt:" in line and "is a file, not a folder" in line


def _table_tool(tmp_path: Path, tool: str, data: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "in.jsonl").write_text(data)
    (tmp_path / "bench.jsonl").write_text('{"question": "what is two and two", "answer": "four"}\n')
    extra = ["--benchmark", "b=bench.jsonl"] if tool == "decontam" else []
    return hare(tool, "in.jsonl", "--out", "out.jsonl", *extra, cwd=tmp_path)


@pytest.mark.parametrize("tool", ["filter", "dedup", "decontam"])
def test_a_jsonl_line_nested_too_deeply(tmp_path: Path, tool: str) -> None:
    rows = '{"text": "a fine row"}\n\n' + '{"text": "x", "meta": ' + DEEP + "\n"
    line = one_error_line(_table_tool(tmp_path, tool, rows))
    assert "error: in.jsonl: line 3 is nested too deeply" in line
    assert not (tmp_path / "out.jsonl").exists()


def test_a_json_array_nested_too_deeply(tmp_path: Path) -> None:
    line = one_error_line(_table_tool(tmp_path, "filter", DEEP))
    assert "error: in.jsonl (one JSON array) is nested too deeply" in line


def test_a_plan_too_big_to_build(tmp_path: Path) -> None:
    """10^5 partitions x 10^5 prompts was accepted, then died of MemoryError after 18 s."""
    cfg = write_run_config(tmp_path, plan={"partitions": 100_000, "prompts_per_partition": 100_000})
    lines = error_lines(hare("plan", str(cfg), cwd=tmp_path))
    assert f"invalid run config {cfg}" in lines[0] and len(lines) == 2, lines
    assert "plan.partitions: 100000 x plan.prompts_per_partition 100000 = 10000000000 prompts" in lines[1]
    assert f"more than the {MAX_PLANNED_PROMPTS} a run may plan" in lines[1]


def test_engine_sizes_beyond_any_engine(tmp_path: Path) -> None:
    cfg = write_run_config(tmp_path, model={"backend": "deterministic-fake", "max_num_seqs": 10**12,
                                            "max_model_len": 10**12})
    lines = error_lines(hare("plan", str(cfg), cwd=tmp_path))
    assert f"invalid run config {cfg}" in lines[0] and len(lines) == 3, lines
    assert "model.max_model_len: Input should be less than or equal to 1048576" in lines[1]
    assert "model.max_num_seqs: Input should be less than or equal to 4096" in lines[2]
