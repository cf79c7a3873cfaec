"""The ``towerbridge`` command.

    towerbridge run                 the whole pipeline on the built-in dataset and embedded Milvus
    towerbridge milvus start|stop|status

Errors a user can act on are printed as one line, without a traceback, with exit code 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from towerbridge import __version__, settings
from towerbridge.errors import ConfigError, TowerbridgeError

EPILOG = """\
environment:
  TOWERBRIDGE_HOME   where models, runs, datasets and the embedded Milvus live (default ~/.towerbridge)
  MILVUS_URI         use this Milvus (e.g. http://localhost:19530 from docker-compose.milvus.yml)
                     instead of the embedded server
  MILVUS_TOKEN       credentials for MILVUS_URI ("user:password" or an API key); never printed
"""


def _print_table(report: dict) -> None:
    from towerbridge.steps import report_table

    print()
    print(f"{report['dataset']} ({report['protocol']}), {report['users_evaluated']} users, "
          f"collection {report['collection']}")
    print(f"{'k':>5}  {'model':>8}  {'exact':>8}  {'popularity':>10}")
    for row in report_table(report):
        print(f"{row['k']:>5}  {row['model']:>8.4f}  {row['exact']:>8.4f}  {row['popularity']:>10.4f}")
    recall = ", ".join(f"{key} {value:.3f}" for key, value in report["index_recall"].items())
    print(f"index recall vs exact search: {recall}")
    training = report["training"]
    print(f"training: {training['seconds']:.1f} s, {training['epochs']} epochs, "
          f"{training['examples_per_s']:,.0f} examples/s")
    print(f"report: {report['report_dir']}/evaluation.json")


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


def cmd_run(args: argparse.Namespace) -> int:
    from milvus import server
    from milvus.store import connect

    if args.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {args.epochs}")
    if args.early_stopping < 0:
        raise ConfigError(f"--early-stopping must be 0 (off) or a positive patience, got {args.early_stopping}")
    if args.data_dir and not Path(args.data_dir).is_dir():
        raise ConfigError(f"--data-dir {args.data_dir}: not a directory")
    with server.endpoint(args.milvus_uri) as uri:
        connect(uri, settings.MilvusTarget.from_env().token).close()  # fail fast, before any work
        from flows.pipeline import pipeline  # imports Prefect: only when there is work to do

        _quiet_prefect_tracebacks()
        report = pipeline(dataset=args.dataset, data_dir=args.data_dir, protocol=args.protocol,
                          report_dir=args.report_dir,
                          milvus_uri=uri, alias=args.alias, epochs=args.epochs, use_features=not args.ids_only,
                          early_stopping_patience=args.early_stopping, seed=args.seed)
        _print_table(report)
    return 0


def cmd_milvus(args: argparse.Namespace) -> int:
    from milvus import server

    if settings.MilvusTarget.from_env().uri and args.action != "status":
        print(f"note: MILVUS_URI is set ({settings.redact(settings.MilvusTarget.from_env().uri)}); "
              "runs use that server, not the embedded one", file=sys.stderr)
    if args.action == "start":
        state, started = server.start()
        print(f"{'started' if started else 'already running'}: {state.uri} (pid {state.pid}, "
              f"data {server.data_dir()})")
    elif args.action == "stop":
        state = server.stop()
        print(f"stopped (pid {state.pid})" if state else "not running")
    else:
        state = server.running()
        info = {"running": bool(state), "data_dir": str(server.data_dir())}
        if state:
            info.update(uri=state.uri, pid=state.pid, version=state.version)
        print(json.dumps(info) if args.json else
              (f"running: {state.uri} (pid {state.pid}, Milvus {state.version}, data {info['data_dir']})"
               if state else f"not running (data {info['data_dir']})"))
        return 0 if state else 3
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from towerbridge.data import fetch

    directory = fetch.fetch(args.name, force=args.force, warn=lambda message: print(message, file=sys.stderr))
    print(f"{args.name}: {directory}")
    print(f"use it with: towerbridge run --dataset {fetch.ARCHIVES[args.name].reader} --data-dir {directory}")
    return 0


def parser() -> argparse.ArgumentParser:
    from milvus.store import DEFAULT_ALIAS
    from towerbridge.data.dataset import DATASETS
    from towerbridge.data.split import PROTOCOLS
    from towers.config import TowerConfig

    top = argparse.ArgumentParser(
        prog="towerbridge",
        description="Two-tower retrieval: train with PyTorch, serve from Milvus (IVF_PQ), orchestrate with Prefect.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"towerbridge {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run", help="train, index and evaluate in one go (the main job)",
        description="Run the pipeline flow: prepare and split the dataset, train the "
                    "two towers, embed every item into a new Milvus collection with an IVF_PQ index "
                    "behind the alias, and report top-k hit rate against a popularity baseline.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("--dataset", default="synthetic", choices=DATASETS,
                     help="dataset to use (default: the built-in synthetic log); movielens-100k reads "
                          "u.data, u.item and u.user from --data-dir")
    run.add_argument("--data-dir", help="where the dataset's files are; for synthetic, a directory with "
                                        "interactions.parquet and items.parquet (default: generate them)")
    run.add_argument("--protocol", default="leave-last-out", choices=PROTOCOLS,
                     help="leave-last-out (default): each user's last interaction is held out and items "
                          "seen in training are not ranked; tfrs: a random 80/20 split ranked over all "
                          "items, comparable with the TensorFlow Recommenders tutorials")
    run.add_argument("--report-dir", help="write evaluation.json and evaluation.md here "
                                          "(default: the run's directory under TOWERBRIDGE_HOME/runs)")
    run.add_argument("--milvus-uri", help="Milvus to use (default: MILVUS_URI, else the embedded server)")
    run.add_argument("--alias", default=DEFAULT_ALIAS, help=f"alias readers query (default: {DEFAULT_ALIAS})")
    run.add_argument("--epochs", type=int, default=TowerConfig.epochs,
                     help=f"training epochs (default: {TowerConfig.epochs})")
    run.add_argument("--early-stopping", type=int, default=0, metavar="PATIENCE",
                     help="stop when a validation split's hit rate has not improved for PATIENCE epochs and "
                          "keep the best epoch (default: 0, train all --epochs)")
    run.add_argument("--ids-only", action="store_true",
                     help="towers read only user and item ids, no other features")
    run.add_argument("--seed", type=int, default=TowerConfig.seed, help="random seed for training")
    run.set_defaults(handler=cmd_run)

    milvus = commands.add_parser(
        "milvus", help="start, stop or inspect the embedded Milvus server",
        description="Keep the embedded Milvus server running across commands, so ad-hoc queries do not "
                    "pay its start-up each time. Its data lives in TOWERBRIDGE_HOME/milvus.",
    )
    milvus.add_argument("action", choices=["start", "stop", "status"])
    milvus.add_argument("--json", action="store_true", help="status as JSON")
    milvus.set_defaults(handler=cmd_milvus)

    from towerbridge.data.fetch import ARCHIVES

    data = commands.add_parser("data", help="download public datasets",
                               description="Fetch a MovieLens archive from GroupLens into TOWERBRIDGE_HOME/datasets, "
                                           "verify its pinned checksum, unpack it atomically; skipped when a "
                                           "verified copy is already there. TOWERBRIDGE_DATASETS_URL sets a mirror.")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    fetch = data_commands.add_parser("fetch", help="download and unpack one archive")
    fetch.add_argument("name", choices=list(ARCHIVES))
    fetch.add_argument("--force", action="store_true", help="download again even if a verified copy exists")
    fetch.set_defaults(handler=cmd_data)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # Prefect's temporary server sends telemetry unless told not to; a user's own setting wins.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    try:
        return args.handler(args)
    except TowerbridgeError as error:
        print(f"towerbridge: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("towerbridge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
