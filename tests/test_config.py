from typing import Any
from pathlib import Path

import pytest
import yaml

from hare.config import ConfigError, load_config
from tests.conftest import ROOT, write_run_config


def _edit(path: Path, fn) -> Path:
    raw = yaml.safe_load(path.read_text())
    fn(raw)
    path.write_text(yaml.safe_dump(raw))
    return path


def test_demo_config_is_valid() -> None:
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    assert cfg.model.backend == "vllm"
    assert cfg.topics.path.is_file()
    assert cfg.store.url.startswith("file:///")


def test_relative_paths_resolve_against_config_folder(tmp_path: Path, monkeypatch) -> None:
    path = write_run_config(tmp_path)
    monkeypatch.chdir("/")
    cfg = load_config(path)
    assert cfg.topics.path == (tmp_path / "topics.yaml").resolve()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r["sampling"].update(temprature=0.5), r"sampling\.temprature: unknown field"),
        (lambda r: r["plan"].update(partitions="many"), r"plan\.partitions"),
        (lambda r: r.pop("plan"), r"plan: Field required"),
        (lambda r: r["topics"].update(path="nope.yaml"), r"topics\.path: file not found: .*nope\.yaml"),
        (lambda r: r["axes"].update(kinds=["poetry"]), r"axes\.kinds: unknown task kind\(s\) \['poetry'\]"),
    ],
    ids=["unknown-field", "wrong-type", "missing-section", "missing-topics-file", "unknown-kind"],
)
def test_config_errors_name_the_field(tmp_path: Path, edit, message: str) -> None:
    path = _edit(write_run_config(tmp_path), edit)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="run config not found"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_credentials_in_store_url_refused(tmp_path: Path) -> None:
    path = _edit(write_run_config(tmp_path), lambda r: r["store"].update(url="s3://key:secret@bucket/x"))
    with pytest.raises(ConfigError, match=r"store\.url: credentials must not be part"):
        load_config(path)


def test_config_hash_tracks_content(tmp_path: Path) -> None:
    a = load_config(write_run_config(tmp_path))
    b = load_config(write_run_config(tmp_path))
    c = load_config(write_run_config(tmp_path, seed=8))
    assert a.config_hash() == b.config_hash() != c.config_hash()


def test_a_decontamination_route_that_is_off_leaves_the_hash_alone(tmp_path: Path) -> None:
    """The judge's and the every-window route's settings count in the hash only where the route
    runs (``auto`` resolved by the engines' and embedders' GPUs): on CPU they change nothing,
    so a run made before they existed keeps its hash; where the route runs, they count."""
    bench = {"benchmarks": [{"name": "tq", "source": str(ROOT / "data" / "benchmarks" / "truthfulqa_bigbench.jsonl"),
                             "fields": ["question", "best_answer"]}]}

    def settings(**decon: Any) -> str:
        return load_config(write_run_config(tmp_path, decontamination={**bench, **decon})).config_hash(inputs=False)

    assert settings() == settings(judge_low=0.3, judge_pairs_per_record=5) == settings(every_window_top_k=9)
    assert settings(judge=True) != settings(judge=True, judge_low=0.3)
    assert settings(every_window=True) != settings(every_window=True, every_window_top_k=9)
    assert settings() != settings(paraphrase_threshold=0.8)
