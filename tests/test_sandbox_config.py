"""Where the sandbox meets the run: a config with code kinds is refused at load where no OS
isolation exists (unless ``validation.code.isolation: none``), and poison records become
rejects with their reason, never a failed partition."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from hare.sandbox import runner as sandbox, bwrap as sandbox_bwrap
from hare.config import ConfigError, load_config
from hare.tasks.validate import validate_table
from tests.conftest import write_run_config
from tests.test_validate import _code_table

CODE_AXES = {"audiences": ["a child"], "styles": ["a Q&A"], "kinds": ["code", "explanation"]}


@pytest.fixture()
def no_bwrap(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """As on a machine without bubblewrap: ``shutil.which('bwrap')`` finds nothing."""
    sandbox.isolation_problem.cache_clear()
    monkeypatch.setattr(sandbox_bwrap.shutil, "which", lambda name: None)
    yield
    sandbox.isolation_problem.cache_clear()


def test_code_kinds_are_refused_at_load_without_os_isolation(tmp_path: Path, no_bwrap: None) -> None:
    path = write_run_config(tmp_path, axes=CODE_AXES, validation={"enabled": True})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    line = str(err.value)
    assert "\n" not in line and "['code']" in line and "apt-get install bubblewrap" in line
    assert "validation.code.isolation: none" in line


def test_isolation_none_is_an_explicit_opt_out(tmp_path: Path, no_bwrap: None) -> None:
    path = write_run_config(tmp_path, axes=CODE_AXES, validation={"enabled": True, "code": {"isolation": "none"}})
    assert load_config(path).validation.code.isolation == "none"


def test_configs_without_code_kinds_load_anywhere(tmp_path: Path, no_bwrap: None) -> None:
    assert load_config(write_run_config(tmp_path, validation={"enabled": True})).validation.enabled


def test_the_cli_refuses_in_one_line_with_exit_2(tmp_path: Path) -> None:
    """``hare plan`` on a machine whose PATH has no bwrap: one line, exit 2, no traceback."""
    path = write_run_config(tmp_path, axes=CODE_AXES, validation={"enabled": True})
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": str(bindir)}
    proc = subprocess.run([str(bindir / "hare"), "plan", str(path)], capture_output=True, text=True, env=env,
                          timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "bubblewrap" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_poison_records_are_rejects_with_their_reason(tmp_path: Path) -> None:
    """A code block of 50k nested operators (a MemoryError in the parser before), a huge text,
    200 MB of output: each a reject with its reason; the good record beside them is kept."""
    cfg = load_config(write_run_config(tmp_path, axes=CODE_AXES, validation={"enabled": True}))
    good = "```python\ndef double(x):\n    return 2 * x\n\nassert double(3) == 6\n```"
    nested = "```python\nx = " + "-" * 50_000 + "1\nassert x\n```"   # over the 20k code cap
    huge_text = good + "\n" + "word " * 30_000
    loud = "```python\nimport sys\nsys.stdout.write('x' * 200_000_000)\nassert True\n```"
    kept, rejects, agg = validate_table(_code_table([good, nested, huge_text, loud]), cfg)
    assert kept.column("text").to_pylist() == [good]
    reasons = dict(zip(rejects.column("prompt_index").to_pylist(), rejects.column("reject_reason").to_pylist()))
    assert reasons == {1: "code_too_long", 2: "too_long", 3: "code_output_limit"}
    assert agg["code_isolation"] == "bwrap"
    assert json.loads(kept.column("validation")[0].as_py())["isolation"]["isolation"] == "bwrap"


def test_a_nested_block_under_the_size_cap_is_a_syntax_reject(tmp_path: Path) -> None:
    cfg = load_config(write_run_config(tmp_path, axes=CODE_AXES,
                                       validation={"enabled": True, "max_text_chars": 1_000_000,
                                                   "code": {"max_code_chars": 1_000_000}}))
    nested = "```python\nx = " + "-" * 200_000 + "1\nassert x\n```"
    kept, rejects, _ = validate_table(_code_table([nested]), cfg)
    assert kept.num_rows == 0 and rejects.column("reject_reason").to_pylist() == ["code_syntax"]
