"""The baseline (never filtered) is compared with the dataset as generated, not with the filtered
dataset (issue 14): `dataset_at_baseline_size` comes from the unfiltered records when given."""

from __future__ import annotations

import pyarrow as pa

from hare.engines.embed import embed
from hare.store.schema import RECORD_SCHEMA
from hare.tasks.diversity import diversity_report
from hare.tasks.plan import build_plan, plan_report
from hare.config import load_config
from tests.conftest import write_run_config
from tests.test_diversity import NEAR_COPIES, VARIED


def _table(texts: list[str]) -> pa.Table:
    base = {f: "" for f in RECORD_SCHEMA.names}
    return pa.Table.from_pylist(
        [{**base, "created_at": None, "prompt_tokens": 0, "output_tokens": 0, "template_version": 1,
          "prompt_index": i, "text": t, "kind": "explanation"} for i, t in enumerate(texts)], schema=RECORD_SCHEMA)


def test_baseline_is_compared_with_the_unfiltered_dataset(tmp_path) -> None:  # noqa: ANN001
    cfg = load_config(write_run_config(tmp_path))
    planned = plan_report(cfg, build_plan(cfg))
    kept = _table(VARIED)              # what survived the filters: varied
    generated = _table(NEAR_COPIES)    # what was generated: near copies (the filters removed the variety problem)
    report = diversity_report(cfg, kept, _table(VARIED), planned, embed, unfiltered=generated)
    figs = report["figures"]
    unfiltered_only = diversity_report(cfg, generated, _table(VARIED), planned, embed)["figures"]
    assert figs["dataset_at_baseline_size"] == unfiltered_only["dataset_at_baseline_size"], \
        "the comparison column is measured on the records as generated"
    assert figs["dataset"]["mean_pairwise_cosine_distance"] > figs["dataset_at_baseline_size"]["mean_pairwise_cosine_distance"]
    assert "before the quality, decontam and dedup filters" in report["compared_with_baseline"]
