"""The ``hare`` command: run a config, show a run's status, prepare the model."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from hare.store import DEFAULT_STORE_URL as DEFAULT_STORE


def stage_drops(store, run_id: str) -> str:  # noqa: ANN001 - an ObjectStore
    """One line saying what each record stage dropped (each stage's own summary of its run
    report), in DAG order."""
    from hare.tasks.publish import read_report
    from hare.tasks.stages import STAGES

    reports = ((stage, read_report(store, run_id, stage.name)) for stage in STAGES if stage.has_report)
    return "; ".join(stage.summary(report) for stage, report in reports if report is not None)


def mixture_line(store: Any, run_id: str) -> str:
    """Target -> actual share of the published words per source (runs with several sources)."""
    import json

    from hare.store import KeyNotFound
    from hare.store.layout import report_key

    try:
        report = json.loads(store.get_bytes(report_key(run_id, "mixture")))
    except KeyNotFound:
        return ""
    if len(report["sources"]) < 2:
        return ""
    shares = ", ".join(f"{s['source']} {s['target_share']:.2f} -> {s['actual_share']:.2f}" for s in report["sources"])
    down = sum(s["records_down_sampled"] for s in report["sources"])
    return f"{shares} (target -> actual share of the words; {down} records down-sampled)"


def _report(result: dict) -> int:
    """What `hare run` and `hare rerun` print once a run is complete."""
    from hare.store.layout import card_key, run_log_key
    from hare.store import open_store
    from hare.run.status import render_status

    store = open_store(result["store"])
    print()
    render_status(store, result["run_id"])
    print(f"\ndataset: {result['dataset']}  ({result['records']} records, "
          f"{result['output_tokens_per_s']} output tokens/s)")
    dropped = stage_drops(store, result["run_id"])
    if dropped:
        print(f"dropped: {dropped}")
    mixture = mixture_line(store, result["run_id"])
    if mixture:
        print(f"mixture: {mixture}")
    print(f"card:    {store.uri(card_key(result['run_id']))}")
    print(f"log:     {store.uri(run_log_key(result['run_id']))}")
    print(f"status:  hare status --store {store.url} {result['run_id']}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from hare.flows.synthesize import run_synthesize

    return _report(run_synthesize(args.config, run_id=args.run_id, store_url=args.store, progress=not args.verbose,
                                  allow_changed_inputs=args.allow_changed_inputs))


def _cmd_rerun(args: argparse.Namespace) -> int:
    from hare.flows.synthesize import run_rerun_failed

    return _report(run_rerun_failed(args.run_id, args.store, progress=not args.verbose,
                                    allow_changed_inputs=args.allow_changed_inputs))


def _cmd_serve(args: argparse.Namespace) -> int:
    from hare.flows.deployments import serve_deployments

    serve_deployments(args.config, store_url=args.store, name=args.name)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from hare.run.status import render_status
    from hare.store import absolute_store_url, open_store

    store = open_store(absolute_store_url(args.store))
    if args.watch:
        from hare.run.status import watch_status

        watch_status(store, args.run_id, args.interval)
    rows = render_status(store, args.run_id)
    return 0 if all(r["status"] == "committed" for r in rows) else 3


def _cmd_model_prepare(args: argparse.Namespace) -> int:
    from hare.config import ModelConfig
    from hare.engines.models import resolve_model

    resolved = resolve_model(args.source or ModelConfig().source)
    print(f"{resolved.path}\nrevision: {resolved.revision}")
    return 0


def _cmd_seeds_from_corpus(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hare.engines.embed import embed
    from hare.priors.seeds import load_corpus, seeds_from_texts, write_seed_file

    corpus = load_corpus(args.corpus, args.text_field, args.split, args.limit, args.sample, args.seed)
    doc = seeds_from_texts(corpus.texts, embed, args.clusters, args.snippets, args.seed, args.domain)
    write_seed_file(doc, Path(args.out))
    topics = doc["domains"][args.domain]["Clusters"]
    read = f" (a sample of the {corpus.seen} read)" if corpus.seen > len(corpus.texts) else ""
    print(f"{len(corpus.texts)} texts{read} -> {len(topics)} seed topics in {args.out}")
    for t in topics:
        print(f"  {t['size']:6d}  {t['topic']}")
    return 0


# The arguments that name a store: a local one must be a folder (or not exist yet).
STORE_ARGS = ("store", "against")


def check_store_folders(args: argparse.Namespace) -> None:
    """Refuse, before any work, a local store argument that names a file (or a path under one):
    otherwise the first read fails deep inside as NotADirectoryError, a traceback to the user."""
    from pathlib import Path

    from hare.store import StoreError, absolute_store_url

    for name in STORE_ARGS:
        url = getattr(args, name, None)
        if not isinstance(url, str) or not url or ("://" in url and not url.startswith("file://")):
            continue  # not given, or s3:// (and other schemes open_store itself refuses)
        path = Path(absolute_store_url(url).removeprefix("file://"))
        existing = next((p for p in (path, *path.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            raise StoreError(f"--{name} {url}: {existing} is a file, not a folder; a local store is a folder")


def _store_override(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", help="override store.url (folder, file:// or s3://)")


def _verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true",
                   help="print Prefect/Ray log lines here instead of the live progress view "
                        "(without it they go to .hare/logs/<run_id>.log and the run folder)")


def _allow_changed_inputs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-changed-inputs", action="store_true",
                   help="resume although an input file (topics, axes, templates, benchmarks) changed since the run "
                        "started: what the change touches is redone, and run.json records the change")


def _run_in_store(p: argparse.ArgumentParser) -> None:
    """A command on an existing run: its id and the store holding it."""
    p.add_argument("run_id")
    p.add_argument("--store", default=DEFAULT_STORE, help=f"store URL (default {DEFAULT_STORE}, or $HARE_STORE)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hare", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    from hare.tasks import estimate

    estimate.register(sub)  # hare plan CONFIG: the dry run and its cost estimate
    from hare.run import verify

    verify.register(sub)  # hare verify RUN: re-hash every committed object and dataset shard

    run = sub.add_parser("run", help="run the synthesize flow for a config (resume with --run-id)")
    run.add_argument("config", help="run YAML, e.g. configs/demo.yaml")
    run.add_argument("--run-id", help="resume this run: redo only uncommitted partitions")
    _store_override(run)
    _verbose(run)
    _allow_changed_inputs(run)
    run.set_defaults(fn=_cmd_run)

    rr = sub.add_parser("rerun", help="complete a run: redo missing, failed or altered partitions, then publish")
    _run_in_store(rr)
    _verbose(rr)
    _allow_changed_inputs(rr)
    rr.set_defaults(fn=_cmd_rerun)

    sv = sub.add_parser("serve", help="serve the synthesize and rerun-failed deployments (needs PREFECT_API_URL)")
    sv.add_argument("config", help="run YAML; its schedule section gives the cron")
    _store_override(sv)
    sv.add_argument("--name", help="deployment name (default: the config's name)")
    sv.set_defaults(fn=_cmd_serve)

    st = sub.add_parser("status", help="partitions, records and tokens/s of a run")
    _run_in_store(st)
    st.add_argument("--watch", action="store_true", help="refresh the table until the run is no longer running")
    st.add_argument("--interval", type=float, default=5.0, help="seconds between refreshes with --watch")
    st.set_defaults(fn=_cmd_status)

    from hare.priors.seeds import DEFAULT_SAMPLE  # main() imports the module anyway (CorpusError)

    seeds = sub.add_parser("seeds", help="seed topics")
    ssub = seeds.add_subparsers(dest="seeds_command", required=True)
    fc = ssub.add_parser("from-corpus", help="embed and cluster a corpus into a seed topic file")
    fc.add_argument("corpus", help="a .parquet or .jsonl file, or a datasets name")
    fc.add_argument("--out", required=True, help="topic file to write (YAML, taxonomy format)")
    fc.add_argument("--clusters", type=int, default=20, help="seed topics to find (k of k-means)")
    fc.add_argument("--text-field", default="text")
    fc.add_argument("--split", default="train", help="split, for a datasets name")
    fc.add_argument("--limit", type=int, help="read only the first this many texts")
    fc.add_argument("--sample", type=int, default=DEFAULT_SAMPLE,
                    help="embed and cluster a seeded uniform sample of this many texts, drawn while "
                         "streaming the corpus (memory is bounded by it, not by the corpus; default %(default)s)")
    fc.add_argument("--snippets", type=int, default=3, help="representative snippets per topic")
    fc.add_argument("--domain", default="Corpus", help="domain name the topics go under")
    fc.add_argument("--seed", type=int, default=0, help="seeds the sample and k-means")
    fc.set_defaults(fn=_cmd_seeds_from_corpus)

    from hare.cli import index as index_cli, table_tools
    from hare import viewer

    table_tools.register(sub)  # filter, dedup, decontam: one stage on any Parquet/JSONL file
    index_cli.register(sub)  # hare index show|retrain: the store's dedup index
    viewer.register(sub)  # hare view [RUN]: a local web viewer of runs and records

    model = sub.add_parser("model", help="model utilities")
    msub = model.add_subparsers(dest="model_command", required=True)
    prep = msub.add_parser("prepare", help="convert the packaged GGUF once into the cache")
    prep.add_argument("--source", help="model.source (default: the packaged SmolLM2)")
    prep.set_defaults(fn=_cmd_model_prepare)
    from hare.cli.model import add_model_push_parser

    add_model_push_parser(msub)  # hare model push FOLDER s3://...: weights + sha256 manifest for engine nodes
    return p


def main(argv: list[str] | None = None) -> int:
    from hare.config import ConfigError
    from hare.engines.engine import CapacityError
    from hare.flows.deployments import ServeError
    from hare.flows.synthesize import RunIncomplete, RunInterrupted
    from hare.engines.models import ModelSourceError
    from hare.stages.decontam.benchmarks import BenchmarkError
    from hare.store.runs import RunError
    from hare.priors.seeds import CorpusError
    from hare.store import StoreError
    from hare.priors.taxonomy import TaxonomyError
    from hare.run.runtime import StartupError

    args = build_parser().parse_args(argv)
    try:
        check_store_folders(args)
        return args.fn(args)
    except (ConfigError, ModelSourceError, RunError, StoreError, TaxonomyError, CapacityError,
            CorpusError, BenchmarkError, ServeError, StartupError) as exc:
        print(f"hare: error: {exc}", file=sys.stderr)
        return 2
    except RunIncomplete as exc:
        print(f"hare: {exc}", file=sys.stderr)
        return 1
    except RunInterrupted as exc:
        print(f"hare: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # before a run existed (e.g. while Ray was starting): nothing to resume
        print("hare: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
