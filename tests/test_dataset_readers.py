"""The published dataset opens with the tools users reach for: `datasets` and DuckDB on S3.

DuckDB cannot download its httpfs extension here, so it queries a pyarrow dataset over S3
(pyarrow's own S3 filesystem against the moto endpoint), which is also how it runs anywhere
without extensions.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hare.flows.synthesize import run_synthesize
from hare.store import open_store
from tests.conftest import new_bucket, write_run_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("ray_local")]


def test_load_dataset_parquet_and_duckdb_over_s3(tmp_path: Path, moto_endpoint: str) -> None:
    import datasets
    import duckdb
    import pyarrow.dataset as ds
    from pyarrow import fs

    bucket = new_bucket()
    cfg = write_run_config(tmp_path, plan={"partitions": 3, "prompts_per_partition": 4})
    result = run_synthesize(str(cfg), store_url=f"s3://{bucket}/hare")
    store = open_store(result["store"])
    shards = [k for k in result["shards"]]
    assert shards and all(k.endswith(".parquet") for k in shards)

    # datasets: the shards as a user downloads them (aws s3 sync), then load_dataset("parquet")
    local = []
    for key in shards:
        path = tmp_path / "download" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(store.get_bytes(key))
        local.append(str(path))
    loaded = datasets.load_dataset("parquet", data_files=local, split="train", cache_dir=str(tmp_path / "hf"))
    assert loaded.num_rows == result["records"] == 12
    assert {"id", "text", "kind", "topic_path", "run_id"} <= set(loaded.column_names)
    assert len(set(loaded["id"])) == loaded.num_rows

    # DuckDB straight from S3
    s3 = fs.S3FileSystem(endpoint_override=moto_endpoint, scheme="http", region="us-east-1",
                         access_key="testing", secret_key="testing")
    dataset = ds.dataset([f"{bucket}/hare/{k}" for k in shards], filesystem=s3, format="parquet")  # noqa: F841
    con = duckdb.connect()
    rows = con.execute("SELECT kind, count(*) AS n, count(DISTINCT id) AS ids FROM dataset GROUP BY kind ORDER BY kind").fetchall()
    assert sum(n for _, n, _ in rows) == 12 and all(n == ids for _, n, ids in rows)
    assert {k for k, _, _ in rows} == {"explanation", "math_word_problem"}
