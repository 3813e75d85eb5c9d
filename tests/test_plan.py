from pathlib import Path

from hare.config import load_config
from hare.tasks.plan import build_plan, prompt_seed, split_partitions
from tests.conftest import write_run_config


def test_same_config_same_plan(tmp_path: Path) -> None:
    cfg = load_config(write_run_config(tmp_path))
    a, b = build_plan(cfg), build_plan(cfg)
    assert a.equals(b)
    assert a.num_rows == 12
    assert a.column("prompt_index").to_pylist() == list(range(12))


def test_seed_changes_order_not_shape(tmp_path: Path) -> None:
    a = build_plan(load_config(write_run_config(tmp_path, seed=1)))
    b = build_plan(load_config(write_run_config(tmp_path, seed=2)))
    assert a.num_rows == b.num_rows
    assert a.column("prompt").to_pylist() != b.column("prompt").to_pylist()
    assert a.column("seed").to_pylist() != b.column("seed").to_pylist()


def test_partitions_and_seeds(tmp_path: Path) -> None:
    plan = build_plan(load_config(write_run_config(tmp_path)))
    parts = split_partitions(plan)
    assert list(parts) == ["p00000", "p00001", "p00002"]
    assert all(t.num_rows == 4 for t in parts.values())
    seeds = plan.column("seed").to_pylist()
    assert len(set(seeds)) == len(seeds)
    assert seeds[5] == prompt_seed(7, 5)


def test_every_combination_before_any_repeat(tmp_path: Path) -> None:
    # 4 leaves x 2 audiences x 1 style x 2 kinds = 16 combinations; 6 x 4 = 24 prompts.
    cfg = load_config(write_run_config(tmp_path, plan={"partitions": 6, "prompts_per_partition": 4}))
    plan = build_plan(cfg)
    combos = list(zip(*(plan.column(c).to_pylist() for c in ("topic_path", "audience", "style", "kind"))))
    assert len(set(combos[:16])) == 16  # the first cycle holds every combination once
    assert len(set(combos)) == 16 and max(combos.count(c) for c in combos) == 2


def test_prompt_carries_template_lineage(tmp_path: Path) -> None:
    row = build_plan(load_config(write_run_config(tmp_path))).to_pylist()[0]
    assert row["template_id"] == row["kind"] and row["template_version"] >= 1
    assert row["topic"] in row["prompt"] and row["audience"] in row["prompt"]
