"""``hare quality``, ``hare dedup``, ``hare decontam``, ``hare pii``: one record stage on any file.

Each command is named after its stage (``hare filter`` still runs the quality rules) and runs
the same plain function its DAG stage runs (``filter_table``, ``decontaminate_table``, the dedup
layers, a stage's ``on_table``) on a Parquet or JSONL file instead of a run's partitions, with no
run config needed:

- input: ``.parquet``, or ``.jsonl`` / ``.json`` (JSON lines), by extension; the text is the
  ``text`` column, or the one ``--text-field`` names (the output keeps the original columns);
- output: kept rows to ``--out``, dropped rows to ``--rejects`` (default
  ``<out>.rejects.<ext>``), each written as Parquet or JSONL by its own extension;
- settings: the defaults, or ``--config FILE`` holding just the command's section (``quality:``,
  ``dedup:``, ``decontam:``, ``pii:``) or a whole run file; ``hare decontam`` also takes its
  benchmarks as ``--benchmark NAME=PATH``.

A stage with a ``file_help`` (hare/stages/base.py) gets its command here without naming it: adding
such a stage adds its command.

Files are processed in batches of rows (dedup: its signatures and embeddings) under a progress
bar on stderr; stdout gets the report.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hare.config import ConfigError

if TYPE_CHECKING:
    import pyarrow as pa

BATCH_ROWS = 1000
FORMATS = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl"}
# Where a file's own 'text' column waits while --text-field's column is processed as 'text'.
_HIDDEN_TEXT = "__hare_original_text__"


class TableInputError(ConfigError):
    """An input or output file these commands cannot use; the message names the file (and field)."""


def _format_of(path: Path, role: str) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise TableInputError(f"{role} {path}: unsupported file type {path.suffix or '(none)'!r} "
                              f"(use .parquet or .jsonl)")
    return fmt


def _loads(text: str, where: str) -> Any:
    """``json.loads``, its failures one :class:`TableInputError` naming ``where`` (the file, or
    its line): a malformed row, or one nested deeper than the parser's recursion limit (a
    RecursionError otherwise), is the user's file to fix, never a traceback."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TableInputError(f"{where} is not JSON: {exc}") from None
    except RecursionError:
        raise TableInputError(f"{where} is nested too deeply to read "
                              f"(more than about {sys.getrecursionlimit()} levels)") from None


def _read_jsonl(path: Path) -> "pa.Table":
    """JSON lines (or one JSON array) -> a table with every key any row has, in first-seen order."""
    import pyarrow as pa

    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        numbered = list(enumerate(_loads(text, f"{path} (one JSON array)"), 1))
    else:
        numbered = [(n, _loads(line, f"{path}: line {n}"))
                    for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    columns: dict[str, None] = {}
    for n, row in numbered:
        if not isinstance(row, dict):
            raise TableInputError(f"{path}: line {n} is not a JSON object")
        columns.update(dict.fromkeys(row))
    rows = [r for _, r in numbered]
    arrays = {}
    for name in columns:
        try:
            arrays[name] = pa.array([r.get(name) for r in rows])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise TableInputError(f"{path}: field {name!r} mixes value types: {exc}") from None
    return pa.table(arrays)


def read_input(path_arg: str, text_field: str) -> "pa.Table":
    """The file's rows, with the text column under the name ``text`` for the stage functions."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(os.path.expanduser(path_arg))
    fmt = _format_of(path, "input")
    if not path.is_file():
        raise TableInputError(f"input file not found: {path}")
    try:
        table = pq.read_table(path) if fmt == "parquet" else _read_jsonl(path)
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        raise TableInputError(f"{path}: not a readable {fmt} file: {exc}") from None
    if text_field not in table.column_names:
        raise TableInputError(f"{path}: no field {text_field!r} (fields: {', '.join(table.column_names) or 'none'}); "
                              f"name the text field with --text-field")
    typ = table.schema.field(text_field).type
    if not (pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_null(typ)):
        raise TableInputError(f"{path}: field {text_field!r} is not text (type {typ})")
    if text_field == "text":
        return table
    return table.rename_columns([_HIDDEN_TEXT if c == "text" else "text" if c == text_field else c
                                 for c in table.column_names])


def _restore(table: "pa.Table", text_field: str) -> "pa.Table":
    """Undo :func:`read_input`'s renaming: the file's own column names again."""
    if text_field == "text":
        return table
    return table.rename_columns([text_field if c == "text" else "text" if c == _HIDDEN_TEXT else c
                                 for c in table.column_names])


def write_output(table: "pa.Table", path: Path) -> None:
    """Parquet or JSON lines, by the path's extension."""
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    if _format_of(path, "output") == "parquet":
        pq.write_table(table, path)
        return
    with open(path, "w", encoding="utf-8") as fh:
        for batch in table.to_batches():
            for row in batch.to_pylist():
                fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")


def _output_paths(args: argparse.Namespace) -> tuple[Path, Path]:
    """--out and --rejects (default ``<out>.rejects.<ext>``), checked before any work starts."""
    out = Path(os.path.expanduser(args.out))
    _format_of(out, "--out")
    rej = Path(os.path.expanduser(args.rejects)) if args.rejects else out.with_name(f"{out.stem}.rejects{out.suffix}")
    _format_of(rej, "--rejects")
    return out, rej


def _concat(tables: list["pa.Table"], empty: "pa.Table") -> "pa.Table":
    import pyarrow as pa

    # A batch without rejects has all-null extra columns: promotion gives them the other batches' types.
    return pa.concat_tables(tables, promote_options="default") if tables else empty


def _finish(kept: "pa.Table", rejects: "pa.Table", args: argparse.Namespace, report: dict[str, Any],
            out: Path, rej: Path, dropped: str = "rejects") -> int:
    write_output(_restore(kept, args.text_field), out)
    write_output(_restore(rejects, args.text_field), rej)
    print(json.dumps(report, indent=2))
    print(f"kept {kept.num_rows} -> {out}; {dropped} {rejects.num_rows} -> {rej}")
    return 0


def _cmd_filter(args: argparse.Namespace) -> int:
    from hare.config import QualityConfig, load_section
    from hare.progress import map_batches
    from hare.tasks.quality import filter_table, quality_report

    out, rej = _output_paths(args)
    cfg = load_section(args.config, "quality", QualityConfig) if args.config else QualityConfig()
    table = read_input(args.input, args.text_field)
    parts = map_batches(lambda t: filter_table(t, cfg, args.kind), table, "quality rules", BATCH_ROWS)
    if not parts:  # an empty file: one call gives the empty tables with their columns
        parts = [filter_table(table, cfg, args.kind)]
    kept = _concat([k for k, _ in parts], parts[0][0])
    rejects = _concat([r for _, r in parts], parts[0][1])
    report = quality_report([kept], [rejects])
    return _finish(kept, rejects, args, {k: report[k] for k in ("checked", "kept", "rejected", "reject_reasons")},
                   out, rej)


def _benchmark_specs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """--benchmark NAME=PATH entries as BenchmarkConfig fields."""
    specs = []
    fields = [f.strip() for f in args.fields.split(",") if f.strip()] if args.fields else None
    for entry in args.benchmark or []:
        name, sep, source = entry.partition("=")
        if not sep or not name.strip() or not source.strip():
            raise ConfigError(f"--benchmark {entry!r}: expected NAME=PATH (a .jsonl/.parquet/.csv file, "
                              f"s3://... or hub:<name>)")
        source = source.strip()
        if not source.startswith(("s3://", "hub:")):
            source = str(Path(os.path.expanduser(source)).resolve())
        spec: dict[str, Any] = {"name": name.strip(), "source": source, "split": args.split, "id_field": args.id_field}
        if fields is not None:
            spec["fields"] = fields
        specs.append(spec)
    return specs


def _decontam_config(args: argparse.Namespace):  # noqa: ANN202 - a DecontamConfig
    from pydantic import ValidationError

    from hare.config import DecontamConfig, load_section

    cfg = load_section(args.config, "decontam", DecontamConfig) if args.config else DecontamConfig()
    extra = _benchmark_specs(args)
    if extra:
        try:
            cfg = DecontamConfig.model_validate({**cfg.model_dump(), "benchmarks": [
                *(b.model_dump() for b in cfg.benchmarks), *extra]})
        except ValidationError as exc:
            errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"--benchmark: {errors}") from None
    if not cfg.benchmarks:
        where = f"{args.config} names no decontam.benchmarks; " if args.config else ""
        raise ConfigError(f"{where}no benchmark to decontaminate against: pass --benchmark NAME=PATH "
                          f"or a --config with decontam.benchmarks")
    return cfg


def _cmd_decontam(args: argparse.Namespace) -> int:
    from hare.progress import map_batches, status
    from hare.tasks.decontam import build_decontaminator, decontam_report, decontaminate_table

    out, rej = _output_paths(args)
    cfg = _decontam_config(args)
    table = read_input(args.input, args.text_field)
    with status("decontam") as step:
        step(f"loading {', '.join(b.name for b in cfg.benchmarks)}")
        dec = build_decontaminator(cfg)
        if cfg.paraphrase and table.num_rows:
            step("loading the embedding model")
            from hare.engines.embed import load_embedder

            load_embedder()
    parts = map_batches(lambda t: decontaminate_table(t, dec, args.kind), table, "decontam", BATCH_ROWS)
    if not parts:
        parts = [decontaminate_table(table, dec, args.kind)]
    kept = _concat([k for k, _ in parts], parts[0][0])
    rejects = _concat([r for _, r in parts], parts[0][1])
    return _finish(kept, rejects, args, decontam_report(kept, rejects), out, rej)


def _cmd_stage(args: argparse.Namespace) -> int:
    """A stage's :meth:`on_table` on a file, batch by batch, with the report every stage has."""
    from hare.config import RunConfig, load_section
    from hare.progress import map_batches
    from hare.stages.base import partition_stats

    stage = args.stage
    out, rej = _output_paths(args)
    model = RunConfig.model_fields[stage.config_section].annotation
    settings = load_section(args.config, stage.config_section, model) if args.config else model()
    table = read_input(args.input, args.text_field)
    parts = map_batches(lambda t: (t, stage.on_table(t, settings)), table, stage.name, BATCH_ROWS) or \
        [(table, stage.on_table(table, settings))]  # an empty file: one call gives the tables with their columns
    kept = _concat([r.kept if r.kept is not None else t for t, r in parts], table)
    rejects = _concat([r.rejects for _, r in parts if r.rejects is not None], table.slice(0, 0))
    report = stage.report([partition_stats(r, t.num_rows) for t, r in parts])
    return _finish(kept, rejects, args, report, out, rej)


def _cmd_dedup(args: argparse.Namespace) -> int:
    """The file as one run of partitions of BATCH_ROWS rows in a scratch store, deduplicated
    by the same sharded decision a flow runs (against ``--against``'s index, read through)."""
    import tempfile

    import numpy as np
    import pyarrow as pa

    from hare.config import DedupConfig, load_section
    from hare.stages.dedup.layers import minhash_signatures
    from hare.stages.dedup.index import band_objects, decide, features_table, minhash_params
    from hare.store.layout import features_key, run_bands_key
    from hare.progress import embed_in_batches, map_batches, status
    from hare.store.schema import record_id
    from hare.stages.base import StageResult, base_counts
    from hare.store import absolute_store_url, open_store
    from hare.store.tables import to_parquet_bytes
    from hare.tasks.dedup import apply_verdicts

    out, rej = _output_paths(args)
    cfg = load_section(args.config, "dedup", DedupConfig) if args.config else DedupConfig()
    table = read_input(args.input, args.text_field)
    texts = [t or "" for t in table.column("text").to_pylist()]
    keys = [record_id(t) for t in texts]  # what exact dedup and the published index compare
    if "id" not in table.column_names:
        table = table.append_column("id", pa.array(keys, pa.string()))
    ids = [None if i is None else str(i) for i in table.column("id").to_pylist()]
    n = len(texts)
    sigs = np.vstack(map_batches(lambda b: minhash_signatures(b, cfg), texts, "MinHash signatures", BATCH_ROWS)
                     or [np.zeros((0, cfg.num_perm), np.uint32)])
    if cfg.semantic:
        from hare.engines.embed import embed

        vecs = embed_in_batches(embed, texts, "embeddings")
    else:
        vecs = np.zeros((n, 0), np.float32)
    with tempfile.TemporaryDirectory(prefix="hare-dedup-") as scratch, status("dedup") as step:
        store = open_store(scratch)
        if args.against:
            from hare.store.overlay import OverlayStore

            store = OverlayStore(store, open_store(absolute_store_url(args.against)))
        params = minhash_params(store, cfg)
        starts = list(range(0, n, BATCH_ROWS)) or [0]
        pids = [f"p{i:05d}" for i in range(len(starts))]
        for pid, s in zip(pids, starts):
            rows = slice(s, s + BATCH_ROWS)
            objects = {features_key("input", pid): features_table(keys[rows], sigs[rows], vecs[rows]),
                       **band_objects(params, keys[rows], sigs[rows], lambda g: run_bands_key("input", g, pid))}
            for key, t in objects.items():
                store.put_bytes(key, to_parquet_bytes(t))
        step(f"finding duplicates among {n} records" + (f" and the index of {args.against}" if args.against else ""))
        decision = decide(store, cfg, "input", pids)
    first_row = {}
    for i, k in enumerate(keys):
        first_row.setdefault(k, i)
    verdicts = {}
    for pid, s in zip(pids, starts):
        for row, (d, of_key, of_run) in decision.verdicts[pid].items():
            # a duplicate of an earlier row of this file names that row's own id
            verdicts[s + row] = (d, ids[first_row[of_key]] if of_run == "input" else of_key, of_run)
    kept, rejects = apply_verdicts(table, verdicts)
    return _finish(kept, rejects, args, base_counts(StageResult(kept, rejects, {}), n), out, rej, dropped="duplicates")


def _add_table_io(parser: argparse.ArgumentParser, section: str) -> None:
    """Arguments every stage-on-a-file command shares."""
    parser.add_argument("input", help="a .parquet or .jsonl (JSON lines) file")
    parser.add_argument("--out", required=True, help="file for the kept rows (.parquet or .jsonl)")
    parser.add_argument("--rejects", help="file for the dropped rows (default: <out>.rejects.<ext of --out>)")
    parser.add_argument("--text-field", default="text", help="the column holding the text (default: text)")
    parser.add_argument("--config", help=f"YAML holding a '{section}:' section, or a whole run file "
                                         f"(default: the defaults)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``decontam``, ``quality`` (also ``filter``) and ``dedup`` commands, and one for each
    stage that runs on a file (``file_help``)."""
    dc = subparsers.add_parser("decontam", help="decontaminate any Parquet or JSONL file against benchmarks")
    _add_table_io(dc, "decontamination")
    dc.add_argument("--benchmark", action="append", metavar="NAME=PATH",
                    help="a benchmark: .jsonl/.parquet/.csv file, s3://... or hub:<name> (repeatable; "
                         "added to the config's)")
    dc.add_argument("--fields", help="comma-separated text fields of the --benchmark items (default: question,answer)")
    dc.add_argument("--split", default="test", help="split of a hub: --benchmark (default: test)")
    dc.add_argument("--id-field", help="item id field of the --benchmark items (default: the row number)")
    dc.add_argument("--kind", default="instruction", help="task kind for rows without a 'kind' column (picks N)")
    dc.set_defaults(fn=_cmd_decontam)

    fl = subparsers.add_parser("quality", aliases=["filter"],
                               help="apply the quality rules to any Parquet or JSONL file (kept rows get q_* scores)")
    _add_table_io(fl, "quality")
    fl.add_argument("--kind", default="explanation", help="task kind for rows without a 'kind' column")
    fl.set_defaults(fn=_cmd_filter)

    dd = subparsers.add_parser("dedup", help="exact, near and semantic dedup of any Parquet or JSONL file")
    _add_table_io(dd, "dedup")
    dd.add_argument("--against", help="store URL whose published index (index/runs/) counts as earlier data")
    dd.set_defaults(fn=_cmd_dedup)

    from hare.tasks.stages import STAGES

    for stage in STAGES:
        if stage.file_help:
            sp = subparsers.add_parser(stage.name, help=stage.file_help)
            _add_table_io(sp, stage.config_section)
            sp.set_defaults(fn=_cmd_stage, stage=stage)
