"""The ``towerbridge`` command.

    towerbridge run                 the whole pipeline on the built-in dataset and embedded Milvus
    towerbridge rebuild             the nightly rebuild, once; `towerbridge serve` runs it on a schedule
    towerbridge milvus start|stop|status

Errors a user can act on are printed as one line, without a traceback, with exit code 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path

from towerbridge import __version__, defaults, settings
from towerbridge.data.options import DataOptions
from towerbridge.errors import ConfigError, TowerbridgeError

EPILOG = """\
environment:
  TOWERBRIDGE_HOME   where models, runs, datasets and the embedded Milvus live (default ~/.towerbridge)
  MILVUS_URI         use this Milvus (e.g. http://localhost:19530 from docker-compose.milvus.yml)
                     instead of the embedded server
  MILVUS_TOKEN       credentials for MILVUS_URI ("user:password" or an API key); never printed
  MILVUS_USER, MILVUS_PASSWORD  the same as two variables (MILVUS_TOKEN wins when both are set)
  MILVUS_CA_CERT     PEM file of the CA that signed the server's certificate, for https:// URIs
"""


def _print_table(report: dict) -> None:
    from towerbridge.report import report_table

    print()
    print(f"{report['dataset']} ({report['protocol']}), {report['users_evaluated']} users, "
          f"collection {report['collection']}")
    print(f"hit rate {'k':>4}  {'model':>8}  {'exact':>8}  {'popularity':>10}  {'random':>8}")
    for row in report_table(report):
        print(f"{'':>8} {row['k']:>4}  {row['model']:>8.4f}  {row['exact']:>8.4f}  {row['popularity']:>10.4f}"
              f"  {row['random']:>8.4f}")
    model = report["model"]
    at = 10 if "ndcg@10" in model else max(report["ks"])
    print(f"model @{at}: recall {model[f'recall@{at}']:.4f}, NDCG {model[f'ndcg@{at}']:.4f}, "
          f"MRR {model[f'mrr@{at}']:.4f}, coverage {model[f'coverage@{at}']:.3f}")
    recall = ", ".join(f"{key} {value:.3f}" for key, value in report["index_recall"].items())
    print(f"index recall vs exact search: {recall}")
    training = report["training"]
    print(f"training: {training['seconds']:.1f} s, {training['epochs']} epochs, "
          f"{training['examples_per_s']:,.0f} examples/s")
    print(f"report: {report['report_dir']}/ (evaluation.json, evaluation.md, hit_rate.png)")


class _NoTracebackForUserErrors(logging.Filter):
    """Prefect logs a flow's exception with its traceback; ours need only the message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], TowerbridgeError):
            record.exc_info = None
            record.exc_text = None
        return True


def _quiet_prefect_tracebacks() -> None:
    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs"):
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            handler.addFilter(_NoTracebackForUserErrors())


def _index_params(args: argparse.Namespace) -> dict:
    """--nlist/--m/--nbits and --keep-versions, checked before any work."""
    from towerbridge.towers.config import TowerConfig

    defaults.check_keep_versions(args.keep_versions, "--keep-versions")
    if args.m is not None and (args.m < 1 or TowerConfig.vector_dim % args.m):
        raise ConfigError(f"--m {args.m} must divide the vector dimension {TowerConfig.vector_dim}")
    if args.nbits is not None and not 1 <= args.nbits <= 16:
        raise ConfigError(f"--nbits must be between 1 and 16, got {args.nbits}")
    if args.nlist is not None and args.nlist < 1:
        raise ConfigError(f"--nlist must be at least 1, got {args.nlist}")
    return {key: value for key, value in (("nlist", args.nlist), ("m", args.m), ("nbits", args.nbits))
            if value is not None}


def _training_options(args: argparse.Namespace) -> dict:
    from towerbridge.steps import check_eval_users

    if args.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {args.epochs}")
    check_eval_users(args.eval_users)
    return {"epochs": args.epochs, "use_features": not args.ids_only, "seed": args.seed,
            "eval_users": args.eval_users}


def cmd_run(args: argparse.Namespace) -> int:
    from towerbridge.milvus import server
    from towerbridge.milvus.store import check_name, connect
    from towerbridge.steps import check_ks

    check_name(args.alias, "--alias")
    if args.early_stopping < 0:
        raise ConfigError(f"--early-stopping must be 0 (off) or a positive patience, got {args.early_stopping}")
    training = _training_options(args)
    data = _data_options(args)
    index_params = _index_params(args)
    check_ks(args.ks)
    with server.endpoint(args.milvus_uri) as uri:
        connect(uri).close()  # fail fast, before any work
        from towerbridge.flows.pipeline import pipeline  # imports Prefect: only when there is work to do

        _quiet_prefect_tracebacks()
        report = pipeline(data=data, **training, report_dir=args.report_dir, milvus_uri=uri, alias=args.alias,
                          index_params=index_params, keep_versions=args.keep_versions,
                          early_stopping_patience=args.early_stopping, ks=args.ks)
        _print_table(report)
    return 0


def _rebuild_parameters(args: argparse.Namespace) -> dict:
    """The rebuild flow's parameters from the command line, checked before any work."""
    from towerbridge.milvus.store import check_name

    check_name(args.alias, "--alias")
    if not 0 < args.target_recall <= 1:
        raise ConfigError(f"--target-recall must be in (0, 1], got {args.target_recall}")
    if args.tolerance < 0:
        raise ConfigError(f"--tolerance must be 0 or more, got {args.tolerance}")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    known = ("hit_rate", "recall", "ndcg", "mrr")
    for metric in metrics:
        name, _, k = metric.partition("@")
        if name not in known or not k.isdigit() or int(k) not in (1, 5, 10, 20, 50, 100):
            raise ConfigError(f"--metrics: {metric!r} is not one of {', '.join(known)} at k 1, 5, 10, 20, 50 "
                              "or 100 (e.g. hit_rate@10)")
    return {"data": _data_options(args), **_training_options(args), "reuse_model": args.reuse_model,
            "alias": args.alias, "index_params": _index_params(args), "keep_versions": args.keep_versions,
            "target_recall": args.target_recall, "metrics": metrics, "tolerance": args.tolerance}


def cmd_rebuild(args: argparse.Namespace) -> int:
    from towerbridge.milvus import server
    from towerbridge.milvus.store import connect

    parameters = _rebuild_parameters(args)
    with server.endpoint(args.milvus_uri) as uri:
        connect(uri).close()  # fail fast, before any work
        from towerbridge.flows.rebuild import rebuild

        _quiet_prefect_tracebacks()
        state = rebuild(**parameters, milvus_uri=uri, return_state=True)
    directory = settings.state_dir("rebuilds") / str(state.state_details.flow_run_id)
    summary_file = directory / "rebuild.json"
    summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
    if summary.get("decision"):
        print()
        for check in summary["decision"]["checks"]:
            print(f"  {'ok  ' if check['passed'] else 'FAIL'} {check['check']}: {check['detail']}")
    if state.is_completed():
        print(f"rebuild of {args.alias}: {summary['serving_after']} now serves "
              f"(before: {summary.get('serving_before') or 'nothing'})")
        if summary.get("dropped_versions"):
            print(f"retention dropped: {', '.join(summary['dropped_versions'])}")
        print(f"report: {directory}/rebuild.md")
        return 0
    error = state.result(raise_on_failure=False)
    print(f"towerbridge: rebuild of {args.alias} {summary.get('outcome', 'failed')}: {error}", file=sys.stderr)
    if summary:
        print(f"serving: {summary.get('serving_after') or 'nothing'} (unchanged); report: {directory}/rebuild.md",
              file=sys.stderr)
    return 3 if summary.get("outcome") == "rejected" else 1


def cmd_serve(args: argparse.Namespace) -> int:
    import zoneinfo

    from prefect.settings import get_current_settings

    try:
        zoneinfo.ZoneInfo(args.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"--timezone {args.timezone!r}: not an IANA time zone such as UTC or "
                          "Europe/London") from None
    parameters = _rebuild_parameters(args)
    parameters["data"] = asdict(parameters["data"])  # a deployment keeps its parameters as JSON
    if args.milvus_uri:
        parameters["milvus_uri"] = args.milvus_uri
    if not get_current_settings().api.url:
        raise ConfigError("schedules need a running Prefect server: start one with `prefect server start`, "
                          "then `export PREFECT_API_URL=http://127.0.0.1:4200/api` (README: Run nightly)")
    from prefect import serve

    from towerbridge.flows.rebuild import nightly

    try:
        deployment = nightly(cron=args.cron, timezone=args.timezone, parameters=parameters)
    except ValueError as error:
        raise ConfigError(f"--cron {args.cron!r}: {error}") from None
    print(f"serving deployment rebuild/nightly: {args.cron} ({args.timezone}), one run at a time; Ctrl-C stops")
    serve(deployment, print_starting_message=False)
    return 0


def _print_rows(rows: list[dict], columns: list[str], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        print("(no results)")
        return
    shown = [[f"{row.get(c):.4f}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in columns]
             for row in rows]
    widths = [min(48, max(len(c), *(len(r[i]) for r in shown))) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in shown:
        print("  ".join((v if len(v) <= w else v[:w - 1] + "…").ljust(w) for v, w in zip(row, widths)))


def _with_store(args: argparse.Namespace, work):
    from towerbridge.milvus import server
    from towerbridge.milvus.store import ItemStore

    with server.endpoint(args.milvus_uri, log=lambda message: print(message, file=sys.stderr)) as uri, \
            ItemStore(uri) as store:
        return work(store)


def _ks(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        message = f"expected comma-separated whole numbers such as 1,10,100, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def _check_k(k: int) -> None:
    if not 1 <= k <= 16384:
        raise ConfigError(f"-k must be between 1 and 16384 (Milvus' limit), got {k}")


def cmd_recommend(args: argparse.Namespace) -> int:
    from towerbridge import analyst

    _check_k(args.k)
    rows = _with_store(args, lambda store: analyst.recommend(
        store, args.collection or args.alias, args.user, args.k, args.filter or "", args.include_seen))
    _print_rows([{"rank": i + 1, **row} for i, row in enumerate(rows)],
                ["rank", "item_id", "score", "title", "genres"], args.json)
    return 0


def cmd_similar(args: argparse.Namespace) -> int:
    from towerbridge import analyst

    _check_k(args.k)
    rows = _with_store(args, lambda store: analyst.similar(
        store, args.collection or args.alias, args.item, args.k, args.filter or ""))
    _print_rows([{"rank": i + 1, **row} for i, row in enumerate(rows)],
                ["rank", "item_id", "score", "title", "genres"], args.json)
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from towerbridge import analyst

    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {args.limit}")
    fields = [f.strip() for f in args.fields.split(",")] if args.fields else None
    rows = _with_store(args, lambda store: analyst.query(store, args.collection or args.alias, args.filter,
                                                         fields, args.limit))
    _print_rows(rows, fields or ["item_id", "title", "genres"], args.json)
    return 0


def cmd_collections(args: argparse.Namespace) -> int:
    from towerbridge import analyst

    rows = _with_store(args, lambda store: analyst.versions(store, args.alias))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [{**row, "serving": "DAMAGED" if row["damaged"] else "*" if row["serving"] else "",
              "index": f"{row['index_type']} nlist={row['params']['nlist']} m={row['params']['m']} "
                       f"nbits={row['params']['nbits']}" if row["params"] else "",
              "complete": "yes" if row["complete"] else "NO",
              "HR@10": "" if row["hit_rate@10"] is None else f"{row['hit_rate@10']:.4f}"} for row in rows]
    _print_rows(table, ["serving", "collection", "rows", "index", "nprobe", "HR@10", "model_id", "created_at",
                        "complete"], False)
    for row in rows:
        if row["damaged"]:
            print(analyst.damaged_message(row["collection"], row["missing_files"])
                  + (f"; alias {args.alias} still points at it" if row["alias_target"] else ""))
    return 0


def cmd_bench(argv: list[str]) -> int:
    """Run the benchmarks (bench/, beside this package in a clone) in a separate process."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
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


def _data_options(args: argparse.Namespace) -> DataOptions:
    """The dataset, filter and split options, checked first."""
    if args.data_dir and not Path(args.data_dir).is_dir():
        raise ConfigError(f"--data-dir {args.data_dir}: not a directory")
    if args.dataset_spec and not Path(args.dataset_spec).is_file():
        raise ConfigError(f"--dataset-spec {args.dataset_spec}: file not found")
    for option in ("holdout", "min_user_interactions", "min_item_interactions"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            raise ConfigError(f"--{option.replace('_', '-')} must be at least 1, got {getattr(args, option)}")
    cutoff = None
    if args.cutoff is not None:
        cutoff = int(args.cutoff) if args.cutoff.isdigit() else None
        if cutoff is None:
            import pandas as pd

            parsed = pd.to_datetime(args.cutoff, utc=True, errors="coerce")
            if pd.isna(parsed):
                raise ConfigError(f"--cutoff {args.cutoff!r}: expected unix seconds or a date such as 2024-05-01")
            cutoff = int(parsed.timestamp())
    filters = {key: value for key, value in (
        ("min_rating", args.min_rating), ("deduplicate", args.dedupe),
        ("min_user_interactions", args.min_user_interactions),
        ("min_item_interactions", args.min_item_interactions)) if value is not None}
    split_options = {key: value for key, value in (
        ("holdout", args.holdout), ("test_fraction", args.test_fraction), ("cutoff", cutoff)) if value is not None}
    if args.test_fraction is not None and not 0 < args.test_fraction < 1:
        raise ConfigError(f"--test-fraction must be between 0 and 1 (exclusive), got {args.test_fraction}")
    return DataOptions(dataset="custom" if args.dataset_spec else args.dataset, data_dir=args.data_dir,
                       spec_file=args.dataset_spec, protocol=args.protocol, filters=filters,
                       split_options=split_options, drop_unknown_items=args.drop_unknown_items)


def cmd_data_check(args: argparse.Namespace) -> int:
    import tempfile

    from towerbridge import steps

    with tempfile.TemporaryDirectory() as scratch:
        prepared = steps.prepare_data(_data_options(args), scratch)
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


def add_data_options(command: argparse.ArgumentParser) -> None:
    """Where the data comes from, how it is filtered and how it is split (run, data check)."""
    from towerbridge.data.dataset import DATASETS
    from towerbridge.data.filters import DEDUPLICATE
    from towerbridge.data.split import PROTOCOLS

    data = command.add_argument_group("data")
    data.add_argument("--dataset", default="synthetic", choices=DATASETS,
                      help="dataset to use (default: the built-in synthetic log); movielens-* read their files "
                           "from --data-dir, or from a copy made by `towerbridge data fetch`")
    data.add_argument("--data-dir", help="where the dataset's files are; for synthetic, a directory with "
                                         "interactions.parquet and items.parquet (default: generate them)")
    data.add_argument("--dataset-spec", metavar="FILE",
                      help="your own CSV/Parquet tables, described in a TOML or YAML file (README: Your data)")
    data.add_argument("--drop-unknown-items", action="store_true",
                      help="drop (and count) interactions whose item is not in the items table, instead of "
                           "stopping with an error")
    filters = command.add_argument_group("implicit feedback (each step's counts are reported)")
    filters.add_argument("--min-rating", type=float, help="keep interactions with rating >= this")
    filters.add_argument("--dedupe", choices=DEDUPLICATE, help="keep-last: one interaction per user and item, "
                                                              "the latest (default: keep-all)")
    filters.add_argument("--min-user-interactions", type=int, metavar="N", help="drop users with fewer")
    filters.add_argument("--min-item-interactions", type=int, metavar="N", help="drop items with fewer")
    split = command.add_argument_group("evaluation split")
    split.add_argument("--protocol", default="leave-last-out", choices=PROTOCOLS,
                       help="leave-last-out (default): each user's last --holdout interactions are held out and "
                            "items seen in training are not ranked; tfrs: a random split ranked over all items, "
                            "comparable with the TensorFlow Recommenders tutorials; time-cutoff: interactions "
                            "from --cutoff on are held out")
    split.add_argument("--holdout", type=int, metavar="N", help="leave-last-out: interactions held out per user "
                                                               "(default 1)")
    split.add_argument("--test-fraction", type=float, help="tfrs: share of interactions held out (default 0.2)")
    split.add_argument("--cutoff", metavar="WHEN", help="time-cutoff: unix seconds or a date (2024-05-01)")


def add_build_options(command: argparse.ArgumentParser, default_alias: str, config) -> None:
    """Milvus, index, training and evaluation options (run, rebuild, serve)."""
    command.add_argument("--milvus-uri", help="Milvus to use (default: MILVUS_URI, else the embedded server)")
    command.add_argument("--alias", default=default_alias, help=f"alias readers query (default: {default_alias})")
    index = command.add_argument_group("index (default: chosen from the data)")
    index.add_argument("--nlist", type=int, help="IVF lists (default about 4·sqrt(items), at most items/39)")
    index.add_argument("--m", type=int, help="PQ sub-quantizers; must divide the vector dimension (default: the "
                                             "dimension, one code per coordinate)")
    index.add_argument("--nbits", type=int, help="bits per PQ code (default 8)")
    index.add_argument("--keep-versions", type=int, default=3, metavar="N",
                       help="collection versions to keep; older ones are dropped (default 3)")
    training = command.add_argument_group("training and evaluation")
    training.add_argument("--epochs", type=int, default=config.epochs,
                          help=f"training epochs (default: {config.epochs})")
    training.add_argument("--ids-only", action="store_true",
                          help="towers read only user and item ids, no other features")
    training.add_argument("--seed", type=int, default=config.seed, help="random seed for training")
    training.add_argument("--eval-users", type=int, metavar="N",
                          help="evaluate a seeded random sample of N users (default: every user with "
                               "held-out interactions)")


def add_rebuild_options(command: argparse.ArgumentParser, default_alias: str, config) -> None:
    add_data_options(command)
    add_build_options(command, default_alias, config)
    checks = command.add_argument_group("validation (the candidate serves only if every check passes)")
    checks.add_argument("--reuse-model", action="store_true",
                        help="skip training: re-index the latest model under TOWERBRIDGE_HOME/models")
    checks.add_argument("--target-recall", type=float, default=defaults.TARGET_RECALL,
                        help="Milvus' recall@100 against exact search must reach this after tuning nprobe "
                             f"(default {defaults.TARGET_RECALL})")
    checks.add_argument("--metrics", default="hit_rate@10,ndcg@10",
                        help="metrics compared with the serving version's (default: hit_rate@10,ndcg@10)")
    checks.add_argument("--tolerance", type=float, default=0.005,
                        help="how much worse than the serving version a metric may be (absolute, default 0.005)")


def _command(commands, name: str, **options) -> argparse.ArgumentParser:
    """A subcommand, with the environment variables listed under its --help."""
    if options.get("add_help", True):
        options = {"epilog": EPILOG, "formatter_class": argparse.RawDescriptionHelpFormatter, **options}
    return commands.add_parser(name, **options)


def parser() -> argparse.ArgumentParser:
    from towerbridge.milvus.store import DEFAULT_ALIAS
    from towerbridge.towers.config import TowerConfig

    top = argparse.ArgumentParser(
        prog="towerbridge",
        description="Two-tower retrieval: train with PyTorch, serve from Milvus (IVF_PQ), orchestrate with Prefect.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"towerbridge {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = _command(
        commands, "run", help="train, index and evaluate in one go (the main job)",
        description="Run the pipeline flow: prepare and split the dataset, train the "
                    "two towers, embed every item into a new Milvus collection with an IVF_PQ index "
                    "behind the alias, and report top-k hit rate against a popularity baseline.",
    )
    add_data_options(run)
    run.add_argument("--report-dir", help="write evaluation.json, evaluation.md and hit_rate.png here "
                                          "(default: the run's directory under TOWERBRIDGE_HOME/runs)")
    add_build_options(run, DEFAULT_ALIAS, TowerConfig)
    run.add_argument("--early-stopping", type=int, default=0, metavar="PATIENCE",
                     help="stop when a validation split's hit rate has not improved for PATIENCE epochs and "
                          "keep the best epoch (default: 0, train all --epochs)")
    run.add_argument("--ks", type=_ks, metavar="K,K,...",
                     help="top-k cut-offs to report (default: 1,5,10,20,50,100)")
    run.set_defaults(handler=cmd_run)

    rebuild = _command(
        commands, "rebuild", help="rebuild the collection once, swapping only a validated version (the nightly job)",
        description="Run the rebuild flow once: load the latest data, retrain (or --reuse-model), embed every "
                    "item into a new IVF_PQ version, validate it (row count, index recall, metrics against the "
                    "serving version), then swap the alias and drop old versions. A failure or a rejected "
                    "candidate leaves the serving version as it was. Exit status: 0 swapped, 1 failed, "
                    "3 rejected by validation.",
    )
    add_rebuild_options(rebuild, DEFAULT_ALIAS, TowerConfig)
    rebuild.set_defaults(handler=cmd_rebuild)

    serve = _command(
        commands, "serve", help="serve the nightly rebuild deployment on its schedule (needs a Prefect server)",
        description="Register the `rebuild/nightly` deployment (cron in an explicit time zone, concurrency "
                    "limit 1) with the Prefect server at PREFECT_API_URL and run its scheduled rebuilds in "
                    "this process until stopped. The rebuild options below become the deployment's parameters.",
    )
    serve.add_argument("--cron", default=defaults.NIGHTLY_CRON,
                       help=f"when to rebuild (default: '{defaults.NIGHTLY_CRON}', 02:00)")
    serve.add_argument("--timezone", default=defaults.NIGHTLY_TIMEZONE,
                       help=f"time zone of --cron (default: {defaults.NIGHTLY_TIMEZONE})")
    add_rebuild_options(serve, DEFAULT_ALIAS, TowerConfig)
    serve.set_defaults(handler=cmd_serve)

    _command(
        commands, "bench", help="measure every stage beside FAISS-direct and exact search (`towerbridge bench --help`)",
        add_help=False)

    milvus = _command(
        commands, "milvus", help="start, stop or inspect the embedded Milvus server",
        description="Keep the embedded Milvus server running across commands, so ad-hoc queries do not "
                    "pay its start-up each time. Its data lives in TOWERBRIDGE_HOME/milvus.",
    )
    milvus.add_argument("action", choices=["start", "stop", "status"])
    milvus.add_argument("--json", action="store_true", help="status as JSON")
    milvus.set_defaults(handler=cmd_milvus)

    def add_target(command: argparse.ArgumentParser) -> None:
        command.add_argument("--alias", default=DEFAULT_ALIAS, help=f"alias to read (default: {DEFAULT_ALIAS})")
        command.add_argument("--collection", help="a specific version's collection instead of the alias")
        command.add_argument("--milvus-uri", help="Milvus to use (default: MILVUS_URI, else the embedded server)")
        command.add_argument("--json", action="store_true", help="print JSON (a list of results)")

    recommend = _command(commands, "recommend", help="top-k items for a user",
                                    description="Recommend items for a user with the model that built the "
                                                "version, leaving out items the user already had.")
    recommend.add_argument("--user", required=True, help="user id")
    recommend.add_argument("-k", type=int, default=10, help="how many items (default 10)")
    recommend.add_argument("--filter", help="Milvus filter expression, e.g. 'genres like \"%%Comedy%%\"'")
    recommend.add_argument("--include-seen", action="store_true", help="keep items the user already had")
    add_target(recommend)
    recommend.set_defaults(handler=cmd_recommend)

    similar = _command(commands, "similar", help="items similar to an item",
                                  description="Items nearest to an item by their trained embeddings.")
    similar.add_argument("--item", required=True, help="item id")
    similar.add_argument("-k", type=int, default=10, help="how many items (default 10)")
    similar.add_argument("--filter", help="Milvus filter expression")
    add_target(similar)
    similar.set_defaults(handler=cmd_similar)

    query = _command(commands, "query", help="rows matching a filter",
                                description="Rows of the collection matching a Milvus filter expression, "
                                            "read with a query iterator.")
    query.add_argument("--filter", required=True,
                       help="Milvus filter expression, e.g. 'item_id in [1, 2]' or 'genres like \"%%Drama%%\"'")
    query.add_argument("--fields", help="comma-separated fields (default: item_id,title,genres)")
    query.add_argument("--limit", type=int, default=100, help="most rows to return (default 100)")
    add_target(query)
    query.set_defaults(handler=cmd_query)

    collections = _command(commands, "collections", help="versions behind the alias",
                                      description="Every version of the alias: which one serves, rows, index "
                                                  "and parameters, tuned nprobe, model, creation time.")
    collections.add_argument("--alias", default=DEFAULT_ALIAS, help=f"alias (default: {DEFAULT_ALIAS})")
    collections.add_argument("--milvus-uri", help="Milvus to use (default: MILVUS_URI, else the embedded server)")
    collections.add_argument("--json", action="store_true", help="print JSON")
    collections.set_defaults(handler=cmd_collections)

    from towerbridge.data.fetch import ARCHIVES

    data = _command(commands, "data", help="download public datasets",
                               description="Fetch a MovieLens archive from GroupLens into TOWERBRIDGE_HOME/datasets, "
                                           "verify its pinned checksum, unpack it atomically; skipped when a "
                                           "verified copy is already there. TOWERBRIDGE_DATASETS_URL sets a mirror.")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    fetch = _command(data_commands, "fetch", help="download and unpack one archive")
    fetch.add_argument("name", choices=list(ARCHIVES))
    fetch.add_argument("--force", action="store_true", help="download again even if a verified copy exists")
    fetch.set_defaults(handler=cmd_data)
    check = _command(
        data_commands, "check", help="load, validate, filter and split a dataset, and report the counts",
        description="Everything `towerbridge run` does to the data before training, with a report of what "
                    "each step kept and removed; nothing is written. Use it on new data before a scheduled run.")
    add_data_options(check)
    check.add_argument("--json", action="store_true", help="the full summary as JSON")
    check.set_defaults(handler=cmd_data_check)
    return top


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # its options are the benchmark's own (`towerbridge bench --help`)
        args = argparse.Namespace(handler=lambda _: cmd_bench(argv[1:]))
    else:
        args = parser().parse_args(argv)
    # Prefect's temporary server sends telemetry unless told not to; a user's own setting wins.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # gRPC's core logs TLS handshake details on stderr by default; our one-line errors say it.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    try:
        settings.home()  # a TOWERBRIDGE_HOME that cannot be used is named before any work
        return args.handler(args)
    except TowerbridgeError as error:
        print(f"towerbridge: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("towerbridge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
