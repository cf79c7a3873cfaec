"""The ``towerbridge`` command.

    towerbridge run                 the whole pipeline on the built-in dataset and embedded Milvus
    towerbridge rebuild             the nightly rebuild, once; `towerbridge serve` runs it on a schedule
    towerbridge milvus start|stop|status

Errors a user can act on are printed as one line, without a traceback, with exit code 1.
"""

from __future__ import annotations

import argparse
import os
import sys

from towerbridge import __version__, defaults, settings
from towerbridge.cli.commands import (
    cmd_bench,
    cmd_collections,
    cmd_data,
    cmd_data_check,
    cmd_items,
    cmd_milvus,
    cmd_query,
    cmd_rebuild,
    cmd_recommend,
    cmd_run,
    cmd_serve,
    cmd_similar,
)
from towerbridge.cli.options import (
    EPILOG,
    add_build_options,
    add_data_options,
    add_latest_data_options,
    add_rebuild_options,
    budget,
    ks_list,
    subcommand,
)
from towerbridge.errors import TowerbridgeError


def parser() -> argparse.ArgumentParser:
    from towerbridge.milvus.schema import DEFAULT_ALIAS
    from towerbridge.towers.config import TowerConfig

    top = argparse.ArgumentParser(
        prog="towerbridge",
        description="Two-tower retrieval: train with PyTorch, serve from Milvus (IVF_PQ), orchestrate with Prefect.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"towerbridge {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = subcommand(
        commands, "run", help="train, index and evaluate in one go (the main job)",
        description="Run the pipeline flow: prepare and split the dataset, train the "
                    "two towers, embed every item into a new Milvus collection with an IVF_PQ index "
                    "behind the alias, and report top-k hit rate against a popularity baseline.",
    )
    add_data_options(run)
    run.add_argument("--report-dir", help="write evaluation.json, evaluation.md and hit_rate.png here "
                                          "(default: the run's directory under TOWERBRIDGE_HOME/runs)")
    add_build_options(run, DEFAULT_ALIAS, TowerConfig)
    run.add_argument("--early-stopping", type=int, default=TowerConfig.early_stopping_patience, metavar="PATIENCE",
                     help="stop when a validation split's hit rate has not improved for PATIENCE epochs and "
                          f"keep the best epoch (default: {TowerConfig.early_stopping_patience}, train all --epochs)")
    run.add_argument("--ks", type=ks_list, metavar="K,K,...",
                     help=f"top-k cut-offs to report (default: {','.join(map(str, defaults.REPORT_KS))})")
    run.set_defaults(handler=cmd_run)

    rebuild = subcommand(
        commands, "rebuild", help="rebuild the collection once, swapping only a validated version (the nightly job)",
        description="Run the rebuild flow once: load the latest data, retrain (or --reuse-model), embed every "
                    "item into a new IVF_PQ version, validate it (row count, index recall, metrics against the "
                    "serving version), then swap the alias and drop old versions. A failure or a rejected "
                    "candidate leaves the serving version as it was. Exit status: 0 swapped, 1 failed, "
                    "3 rejected by validation.",
    )
    add_rebuild_options(rebuild, DEFAULT_ALIAS, TowerConfig)
    rebuild.set_defaults(handler=cmd_rebuild)

    serve = subcommand(
        commands, "serve", help="serve the nightly rebuild deployment on its schedule (needs a Prefect server)",
        description="Register the `rebuild/nightly` deployment (cron in an explicit time zone, concurrency "
                    "limit 1), which continues the serving model each night, and `rebuild/full-retrain`, the "
                    "same rebuild trained from scratch on a slower schedule (--full-cron, weekly by default), "
                    "with the Prefect server at PREFECT_API_URL, and run their scheduled rebuilds in this "
                    "process until stopped. The rebuild options below become both deployments' parameters; "
                    "a rebuild of an alias waits for the other one's to finish.",
    )
    serve.add_argument("--cron", default=defaults.NIGHTLY_CRON,
                       help=f"when to rebuild (default: '{defaults.NIGHTLY_CRON}', 02:00)")
    serve.add_argument("--timezone", default=defaults.NIGHTLY_TIMEZONE,
                       help=f"time zone of --cron and --full-cron (default: {defaults.NIGHTLY_TIMEZONE})")
    serve.add_argument("--full-cron", default=defaults.FULL_RETRAIN_CRON, metavar="CRON",
                       help="when to rebuild with a model trained from scratch, as --from-scratch does "
                            f"(default: '{defaults.FULL_RETRAIN_CRON}', Sundays 04:00, after that night's "
                            "rebuild; 'off': never; not registered with --from-scratch, which every night does)")
    add_rebuild_options(serve, DEFAULT_ALIAS, TowerConfig)
    serve.set_defaults(handler=cmd_serve)

    subcommand(
        commands, "bench", help="measure every stage beside FAISS-direct and exact search (`towerbridge bench --help`)",
        add_help=False)

    milvus = subcommand(
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
        command.add_argument("--json", action="store_true",
                             help="print JSON (a list of results) and nothing else on stdout; notices go to stderr")

    recommend = subcommand(commands, "recommend", help="top-k items for a user, or after a history of items",
                           description="Recommend items with the model that built the version, leaving out "
                                       "items the user already had. With a history tower (--user-tower sequence "
                                       "or pooled) the user's query reads their latest items: in the model's "
                                       "own copy of its data, or in newer data given with --data-dir; "
                                       "--history asks for someone who just had the items given. The score "
                                       "shown is the model's: the inner product of the user's query vector and "
                                       "the item's vector (trained similarity / temperature, plus the popularity "
                                       "prior when the model uses one), as the IVF_PQ index estimates it.")
    recommend.add_argument("--user", help="user id")
    recommend.add_argument("--history", metavar="ITEM,ITEM,...",
                           help="item ids, oldest first, instead of --user (history towers only)")
    recommend.add_argument("-k", type=int, default=10, help="how many items (default 10)")
    recommend.add_argument("--filter", help="Milvus filter expression, e.g. 'genres like \"%%Comedy%%\"'")
    recommend.add_argument("--include-seen", action="store_true", help="keep items the user already had")
    add_latest_data_options(recommend)
    add_target(recommend)
    recommend.set_defaults(handler=cmd_recommend)

    similar = subcommand(commands, "similar", help="items similar to an item",
                                  description="Items nearest to an item by the cosine similarity of their "
                                              "trained embeddings (in [-1, 1]; the popularity prior stored with "
                                              "each vector is left out), computed exactly for the hits the "
                                              "IVF_PQ index finds.")
    similar.add_argument("--item", required=True, help="item id")
    similar.add_argument("-k", type=int, default=10, help="how many items (default 10)")
    similar.add_argument("--filter", help="Milvus filter expression")
    add_target(similar)
    similar.set_defaults(handler=cmd_similar)

    query = subcommand(commands, "query", help="rows matching a filter",
                                description="Rows of the collection matching a Milvus filter expression, "
                                            "read with a query iterator.")
    query.add_argument("--filter", required=True,
                       help="Milvus filter expression, e.g. 'item_id in [1, 2]' or 'genres like \"%%Drama%%\"'")
    query.add_argument("--fields", help="comma-separated fields (default: item_id,title,genres)")
    query.add_argument("--limit", type=int, default=100, help="most rows to return (default 100)")
    add_target(query)
    query.set_defaults(handler=cmd_query)

    items = subcommand(commands, "items", help="add or retire catalog items in the serving version now",
                       description="Catalog changes between rebuilds, applied to the version serving the alias "
                                   "within seconds. Each change is logged first (TOWERBRIDGE_HOME/catalog/ALIAS), "
                                   "then applied; the next rebuild keeps it (added items in its catalog, retired "
                                   "ones left out), and changes made while a rebuild runs are applied to its "
                                   "version right after its swap.")
    items_commands = items.add_subparsers(dest="items_command", required=True, metavar="ACTION")
    add = subcommand(items_commands, "add", help="embed new items with the serving model and add them",
                     description="Embed items from their features with the model of the serving version (cold "
                                 "start: they have no interactions yet) and upsert them into it: an item it holds "
                                 "already is replaced, so adding the same items twice adds nothing twice. Items "
                                 "whose features the model cannot read are refused, named, before anything is "
                                 "written.")
    add.add_argument("--items", metavar="FILE", help="a Parquet or CSV file: item_id and the item feature columns "
                                                     "the model reads (title, genres, ...)")
    add.add_argument("--data-dir", help="a directory holding items.parquet (or items.csv), instead of --items")
    retire = subcommand(items_commands, "retire", help="remove items from what every reader gets",
                        description="Delete items from the serving version, so that no reader (recommend, "
                                    "similar, query, the Python API, a pymilvus query of your own) returns them "
                                    "again; the next rebuild leaves them out too. Add one again to bring it back.")
    retire.add_argument("--ids", metavar="ID,ID,...", help="item ids, comma-separated")
    retire.add_argument("--filter", help="a Milvus filter expression selecting the items, e.g. "
                                         "'genres like \"%%Documentary%%\"'")
    watch = subcommand(items_commands, "serve", help="apply the files dropped into an inbox, every few minutes "
                                                     "(needs a Prefect server)",
                       description="Register the deployment catalog/changes (an interval, one run at a time) with "
                                   "the Prefect server at PREFECT_API_URL and run it in this process until stopped: "
                                   "each run applies the files in INBOX/add (items files) and INBOX/retire (item id "
                                   "files: an item_id column, or one id per line in a .txt), oldest first, then "
                                   "moves each to INBOX/done, or to INBOX/failed beside a note saying why. "
                                   "`prefect deployment run catalog/changes` runs it now.")
    watch.add_argument("--inbox", required=True, help="the inbox directory (add/ and retire/ are created)")
    watch.add_argument("--every", type=budget, default=900.0, metavar="DURATION",
                       help="how often (seconds, or 5m, 1h, ...; default 15m)")
    for command in (add, retire, watch):
        command.add_argument("--alias", default=DEFAULT_ALIAS, help=f"alias whose serving version changes "
                                                                    f"(default: {DEFAULT_ALIAS})")
        command.add_argument("--milvus-uri", help="Milvus to use (default: MILVUS_URI, else the embedded server)")
        if command is not watch:
            command.add_argument("--json", action="store_true", help="print what was done as JSON")
        command.set_defaults(handler=cmd_items)

    collections = subcommand(commands, "collections", help="versions behind the alias",
                                      description="Every version of the alias: which one serves, rows, index "
                                                  "and parameters, tuned nprobe (and reorder_k for SCANN), model, "
                                                  "creation time.")
    collections.add_argument("--alias", default=DEFAULT_ALIAS, help=f"alias (default: {DEFAULT_ALIAS})")
    collections.add_argument("--milvus-uri", help="Milvus to use (default: MILVUS_URI, else the embedded server)")
    collections.add_argument("--json", action="store_true", help="print JSON")
    collections.set_defaults(handler=cmd_collections)

    from towerbridge.data.fetch import ARCHIVES

    data = subcommand(commands, "data", help="download public datasets",
                               description="Fetch a MovieLens archive from GroupLens into TOWERBRIDGE_HOME/datasets, "
                                           "verify its pinned checksum, unpack it atomically; skipped when a "
                                           "verified copy is already there. TOWERBRIDGE_DATASETS_URL sets a mirror.")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    fetch = subcommand(data_commands, "fetch", help="download and unpack one archive")
    fetch.add_argument("name", choices=list(ARCHIVES))
    fetch.add_argument("--force", action="store_true", help="download again even if a verified copy exists")
    fetch.set_defaults(handler=cmd_data)
    check = subcommand(
        data_commands, "check", help="load, validate, filter and split a dataset, and report the counts",
        description="Everything `towerbridge run` does to the data before training, with a report of what "
                    "each step kept and removed; nothing is written unless --out says where. Use it on new data "
                    "before a scheduled run.")
    add_data_options(check)
    check.add_argument("--json", action="store_true", help="the full summary as JSON")
    check.add_argument("--out", metavar="DIR",
                       help="keep the prepared data (items, users, train and held-out Parquet, summary.json) in DIR, "
                            "a new directory: the input of torchrun -m towerbridge.towers.distributed")
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
    # Prefect waits 20 s for that server by default; it takes 15-25 s on a loaded 2-core machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
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
