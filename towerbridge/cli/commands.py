"""What each subcommand does, once its options are checked (``options``); printing is in
``output``. Heavy imports (torch, Prefect, pymilvus) happen inside the commands that need them."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from towerbridge import settings
from towerbridge.cli.options import (
    check_k,
    data_options,
    given,
    history_list,
    latest_interactions,
    pipeline_options,
    rebuild_options,
    refused,
)
from towerbridge.cli.output import print_frame, print_report, print_rows, quiet_prefect_tracebacks, records
from towerbridge.errors import ConfigError


def cmd_run(args: argparse.Namespace) -> int:
    from towerbridge.milvus import server

    options = pipeline_options(args)
    options = options.with_prepared(prepare_before_servers(options.train.data))
    from towerbridge.milvus.store import connect  # the heavy imports come after the cheap checks

    with server.endpoint(options.milvus_uri) as uri:
        connect(uri).close()  # fail fast, before any work
        from towerbridge.flows.pipeline import pipeline  # imports Prefect: only when there is work to do

        quiet_prefect_tracebacks()
        report = pipeline(options.model_copy(update={"milvus_uri": uri}))
        print_report(report)
    return 0


def prepare_before_servers(data) -> str:
    """Load, validate, filter and split the data before any server (Milvus, Prefect) starts, so
    bad data fails in seconds; the flows train on the directory this writes."""
    from towerbridge.data.prepare import prepare_data  # pandas only: no torch, Prefect or pymilvus

    return prepare_data(data, str(settings.state_dir("prepared") / settings.new_id()))


def cmd_rebuild(args: argparse.Namespace) -> int:
    from towerbridge.milvus import server

    options = rebuild_options(args)
    if not options.reuse_model:  # a rebuild that trains reads the data first, before any server
        options = options.with_prepared(prepare_before_servers(options.train.data))
    from towerbridge.milvus.store import connect
    with server.endpoint(options.milvus_uri) as uri:
        connect(uri).close()  # fail fast, before any work
        from towerbridge.flows.rebuild import rebuild

        quiet_prefect_tracebacks()
        state = rebuild(options.model_copy(update={"milvus_uri": uri}), return_state=True)
    from towerbridge.rebuild import summary_of

    # the flow returns its summary; when it fails, its error carries the summary (if it got that far)
    completed = state.is_completed()
    error = None if completed else state.result(raise_on_failure=False)
    summary = state.result() if completed else summary_of(error)
    if summary is not None and summary.training:
        print(f"training: {summary.training}")
    if summary is not None and summary.decision:
        print()
        for check in summary.decision.checks:
            print(f"  {'ok  ' if check.passed else 'FAIL'} {check.name}: {check.detail}")
    if completed:
        print(f"rebuild of {args.alias}: {summary.serving_after} now serves "
              f"(before: {summary.serving_before or 'nothing'})")
        if summary.dropped_versions:
            print(f"retention dropped: {', '.join(summary.dropped_versions)}")
        print(f"report: {summary.report_dir}/rebuild.md")
        return 0
    print(f"towerbridge: rebuild of {args.alias} {summary.outcome if summary else 'failed'}: {error}", file=sys.stderr)
    if summary is not None:
        print(f"serving: {summary.serving_after or 'nothing'} (unchanged); report: {summary.report_dir}/rebuild.md",
              file=sys.stderr)
    return 3 if summary is not None and summary.outcome == "rejected" else 1


def cmd_serve(args: argparse.Namespace) -> int:
    import zoneinfo

    from prefect.settings import get_current_settings

    try:
        zoneinfo.ZoneInfo(args.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"--timezone {args.timezone!r}: not an IANA time zone such as UTC or "
                          "Europe/London") from None
    options = rebuild_options(args)
    if not get_current_settings().api.url:
        raise ConfigError("schedules need a running Prefect server: start one with `prefect server start`, "
                          "then `export PREFECT_API_URL=http://127.0.0.1:4200/api` (README: Run nightly)")
    from prefect import serve

    from towerbridge.flows.rebuild import full_retrain, nightly

    try:
        deployments = [nightly(cron=args.cron, timezone=args.timezone, options=options)]
    except ValueError as error:
        raise ConfigError(f"--cron {args.cron!r}: {error}") from None
    full = args.full_cron.strip().lower() not in ("off", "none", "") and not options.from_scratch
    if full:
        try:
            deployments.append(full_retrain(cron=args.full_cron, timezone=args.timezone, options=options))
        except ValueError as error:
            raise ConfigError(f"--full-cron {args.full_cron!r}: {error}") from None
    training = ("reuses the latest model" if options.reuse_model else
                "trains from scratch" if options.from_scratch else "continues the serving model")
    print(f"serving deployment rebuild/nightly: {args.cron} ({args.timezone}), {training}, one run at a time")
    if full:
        print(f"serving deployment rebuild/full-retrain: {args.full_cron} ({args.timezone}), trains from scratch")
    else:
        print("no rebuild/full-retrain deployment (--full-cron off, or every night trains from scratch)")
    print("Ctrl-C stops")
    serve(*deployments, print_starting_message=False)
    return 0


def _ask(args: argparse.Namespace, question):
    """Ask the item collection through towerbridge.api, as a notebook does; server notices go to stderr."""
    from towerbridge import api  # after the cheap checks: it imports torch and pymilvus

    with api.Client(args.milvus_uri, args.alias) as client:
        return question(client)


def cmd_recommend(args: argparse.Namespace) -> int:
    check_k(args.k)
    history = history_list(args.history) if args.history is not None else None
    if (args.user is None) == (history is None):
        raise ConfigError("recommend needs --user or --history (one of them)")
    interactions = latest_interactions(args)
    if interactions is not None and history is not None:
        raise ConfigError("--data-dir, --dataset and --dataset-spec give a user's latest items: use them with "
                          "--user, not with --history")
    frame = _ask(args, lambda tb: tb.recommend(args.user, args.k, args.filter or "", args.include_seen, history,
                                               interactions, args.collection))
    print_frame(frame, args.json)
    return 0


def cmd_similar(args: argparse.Namespace) -> int:
    check_k(args.k)
    frame = _ask(args, lambda tb: tb.similar(args.item, args.k, args.filter or "", args.collection))
    print_frame(frame, args.json)
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {args.limit}")
    fields = [f.strip() for f in args.fields.split(",")] if args.fields else None
    frame = _ask(args, lambda tb: tb.query(args.filter, fields, args.limit, args.collection))
    print_frame(frame, args.json)
    return 0


def index_label(index_type: str | None, params: dict | None, fallback: str | None = None) -> str:
    """``IVF_PQ nlist=… m=… nbits=…`` or ``SCANN nlist=…``: the build parameters, not the search's;
    ``(auto)`` for a SCANN that IVF_PQ fell short of (``--json`` says why)."""
    if not params:
        return ""
    built = " ".join(f"{key}={value}" for key, value in params.items() if key not in ("nprobe", "reorder_k"))
    return f"{index_type or ''} {built}{' (auto)' if fallback else ''}".strip()


def gate_label(gate: dict | None) -> str:
    """What the rebuild's gate based its decision on, short: the first gated metric's difference
    from the version it replaced, its interval, on how many users (``--json`` has all of it)."""
    if not gate:
        return ""
    if not gate["compared"] or not gate["metrics"]:
        return "not compared"
    metric = gate["metrics"][0]

    def signed(value: float | None, unbounded: str) -> str:
        return unbounded if value is None else f"{value:+.4f}"

    return (f"{metric['metric']} {signed(metric['difference'], '?')} [{signed(metric['low'], '-inf')}, "
            f"{signed(metric['high'], '+inf')}] n={gate['users']}")


def cmd_collections(args: argparse.Namespace) -> int:
    from towerbridge import analyst

    frame = _ask(args, lambda tb: tb.versions())
    if args.json:
        print_frame(frame, True)
        return 0
    rows = records(frame)
    table = [{**row, "serving": "DAMAGED" if row["damaged"] else "*" if row["serving"] else "",
              "index": index_label(row["index_type"], row["params"], row.get("index_fallback")),
              "reorder_k": "" if row.get("reorder_k") is None else row["reorder_k"],
              "complete": "yes" if row["complete"] else "NO",
              "HR@10": "" if row["hit_rate@10"] is None else f"{row['hit_rate@10']:.4f}",
              "gate": gate_label(row["gate"]),
              "changes": "" if not row.get("catalog") else f"+{row['catalog']['added']}/-{row['catalog']['retired']}"}
             for row in rows]
    print_rows(table, ["serving", "collection", "rows", "index", "nprobe", "reorder_k", "HR@10", "gate", "changes",
                       "model_id", "created_at", "complete"], False)
    for row in rows:
        if row["damaged"]:
            print(analyst.damaged_message(row["collection"], row["missing_files"])
                  + (f"; alias {args.alias} still points at it" if row["alias_target"] else ""))
    return 0


def cmd_bench(argv: list[str]) -> int:
    """Run the benchmarks (bench/, beside this package in a clone) in a separate process."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    if not (root / "bench" / "__main__.py").is_file():
        raise ConfigError("`towerbridge bench` runs from a clone of the towerbridge repository "
                          "(the benchmarks in bench/ are not installed with the package)")
    return subprocess.call([sys.executable, "-m", "bench", *argv], cwd=root)


def cmd_milvus(args: argparse.Namespace) -> int:
    from towerbridge import analyst
    from towerbridge.milvus import server
    from towerbridge.milvus.store import ItemStore

    def damaged(state: server.ServerState) -> dict[str, list[str]]:
        """Versions with files missing from the server's disk: Milvus can never load them."""
        with ItemStore(state.uri) as store:
            found = store.damaged()
        for collection, missing in found.items():
            print(f"warning: {analyst.damaged_message(collection, missing)}", file=sys.stderr)
        return found

    if settings.MilvusTarget.from_env().uri and args.action != "status":
        print(f"note: MILVUS_URI is set ({settings.redact(settings.MilvusTarget.from_env().uri)}); "
              "runs use that server, not the embedded one", file=sys.stderr)
    if args.action == "start":
        state, started = server.start_serving()
        print(f"{'started' if started else 'already running'}: {state.uri} (pid {state.pid}, "
              f"data {server.data_dir()})")
        damaged(state)
    elif args.action == "stop":
        state = server.stop()
        print(f"stopped (pid {state.pid})" if state else "not running")
    else:
        state = server.running()
        info = {"running": bool(state), "data_dir": str(server.data_dir())}
        if state:
            info.update(uri=state.uri, pid=state.pid, version=state.version, damaged=damaged(state))
        print(json.dumps(info) if args.json else
              (f"running: {state.uri} (pid {state.pid}, Milvus {state.version}, data {info['data_dir']})"
               if state else f"not running (data {info['data_dir']})"))
        return 0 if state else 3
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    import tempfile

    data = data_options(args)
    from towerbridge.data.prepare import prepare_data

    if args.out and Path(args.out).exists():
        raise ConfigError(f"--out {args.out}: already exists; give a new directory")
    with tempfile.TemporaryDirectory() as scratch:
        prepared = prepare_data(data, args.out or scratch)
        summary = json.loads((Path(prepared) / "summary.json").read_text())
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{summary['dataset']} from {summary['source']}: {summary['interactions']:,} interactions, "
          f"{summary['users']:,} users, {summary['items']:,} items")
    for step in summary["filters"]["steps"]:
        print(f"  filter {step['step']}: removed {step['removed']:,} of {step['interactions_before']:,}")
    for what, counts in summary["dropped"].items():
        print(f"  dropped ({what.replace('_', ' ')}): {counts['interactions']:,} interactions, "
              f"e.g. {', '.join(counts['examples'])}")
    print(f"  split {summary['protocol']}: {summary['train']:,} train, {summary['held_out']:,} held out")
    for reason, count in summary["unscorable_held_out"].items():
        print(f"  not scorable ({reason}): {count:,} held-out interactions left out")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from towerbridge.data import fetch

    directory = fetch.fetch(args.name, force=args.force, warn=lambda message: print(message, file=sys.stderr))
    print(f"{args.name}: {directory}")
    print(f"use it with: towerbridge run --dataset {fetch.ARCHIVES[args.name].reader} --data-dir {directory}")
    return 0


def read_items_file(args: argparse.Namespace):
    """The items ``items add`` reads: ``--items FILE`` (Parquet or CSV), or the items table of
    ``--data-dir DIR`` (items.parquet, else items.csv)."""
    import pandas as pd

    from towerbridge.errors import DataError

    if (args.items is None) == (args.data_dir is None):
        raise ConfigError("items add needs --items FILE or --data-dir DIR (one of them)")
    candidates = [Path(args.items)] if args.items else [Path(args.data_dir) / name
                                                         for name in ("items.parquet", "items.csv")]
    path = next((candidate for candidate in candidates if candidate.exists()), candidates[0])
    if not path.is_file():
        raise DataError(f"{path}: no such items file")
    try:
        # ids as written ("00042" stays itself for string ids; integer ids are converted when checked)
        return pd.read_csv(path, dtype={"item_id": str}) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read it as {'CSV' if path.suffix.lower() == '.csv' else 'Parquet'} "
                        f"({str(error).splitlines()[0][:200]})") from None


def cmd_items(args: argparse.Namespace) -> int:
    from towerbridge import steps
    from towerbridge.milvus import server

    if args.items_command == "serve":
        return _serve_catalog(args)
    if args.items_command == "add":
        items = read_items_file(args)
        with server.endpoint(args.milvus_uri) as uri:
            update = steps.add_items(uri, args.alias, items)
    else:
        ids = [part.strip() for part in args.ids.split(",") if part.strip()] if args.ids is not None else None
        if ids is not None and not ids:
            raise ConfigError("--ids: give item ids, comma-separated")
        with server.endpoint(args.milvus_uri) as uri:
            update = steps.retire_items(uri, args.alias, ids=ids, expression=args.filter)
    if args.json:
        print(json.dumps({**update.__dict__, "record": update.record.to_dict() if update.record else None},
                         default=str))
    else:
        print(update.describe())
    return 0


def _serve_catalog(args: argparse.Namespace) -> int:
    from prefect.settings import get_current_settings

    from towerbridge.options import CatalogOptions

    if args.every < 60:
        raise ConfigError(f"--every must be at least a minute, got {args.every:g} s")
    inbox = Path(args.inbox).resolve()
    for part in ("add", "retire"):
        (inbox / part).mkdir(parents=True, exist_ok=True)
    with refused():
        options = CatalogOptions(alias=args.alias, inbox=str(inbox), **given(milvus_uri=args.milvus_uri))
    if not get_current_settings().api.url:
        raise ConfigError("schedules need a running Prefect server: start one with `prefect server start`, "
                          "then `export PREFECT_API_URL=http://127.0.0.1:4200/api` (README: Run nightly)")
    from prefect import serve

    from towerbridge.flows.catalog import every

    deployment = every(minutes=args.every / 60, options=options)
    print(f"serving deployment catalog/changes: every {args.every / 60:g} min, inbox {inbox} (add/, retire/), "
          f"alias {args.alias}; Ctrl-C stops")
    serve(deployment, print_starting_message=False)
    return 0
