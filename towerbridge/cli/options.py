"""The command line's options: how they are declared, and how they become the flows' options
objects (``towerbridge.options``) before any work. Those objects check every value; a value they
refuse is printed as one ConfigError naming the option as it was given (``--keep-versions``)."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import ValidationError

from towerbridge import defaults
from towerbridge.data.options import DataOptions
from towerbridge.errors import ConfigError
from towerbridge.options import (
    EvaluateOptions,
    GateOptions,
    IndexOptions,
    IndexSettings,
    OptionError,
    PipelineOptions,
    RebuildOptions,
    TrainOptions,
    duration_seconds,
)
from towerbridge.towers.config import USER_TOWERS, parse_setting

EPILOG = """\
environment:
  TOWERBRIDGE_HOME   where models, runs, datasets and the embedded Milvus live (default ~/.towerbridge)
  MILVUS_URI         use this Milvus (e.g. http://localhost:19530 from docker-compose.milvus.yml)
                     instead of the embedded server
  MILVUS_TOKEN       credentials for MILVUS_URI ("user:password" or an API key); never printed
  MILVUS_USER, MILVUS_PASSWORD  the same as two variables (MILVUS_TOKEN wins when both are set)
  MILVUS_CA_CERT     PEM file of the CA that signed the server's certificate, for https:// URIs
"""


def subcommand(commands, name: str, **options) -> argparse.ArgumentParser:
    """A subcommand, with the environment variables listed under its --help."""
    if options.get("add_help", True):
        options = {"epilog": EPILOG, "formatter_class": argparse.RawDescriptionHelpFormatter, **options}
    return commands.add_parser(name, **options)


def add_data_options(command: argparse.ArgumentParser) -> None:
    """Where the data comes from, how it is filtered and how it is split (run, data check)."""
    from towerbridge.data.dataset import DATASETS
    from towerbridge.data.filters import DEDUPLICATE
    from towerbridge.data.split import PROTOCOLS

    data = command.add_argument_group("data")
    data.add_argument("--dataset", default=defaults.DATASET, choices=DATASETS,
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
    split.add_argument("--protocol", default=defaults.PROTOCOL, choices=PROTOCOLS,
                       help="leave-last-out (default): each user's last --holdout interactions are held out and "
                            "items seen in training are not ranked; tfrs: a random split ranked over all items, "
                            "comparable with the TensorFlow Recommenders tutorials; time-cutoff: interactions "
                            "from --cutoff on are held out")
    split.add_argument("--holdout", type=int, metavar="N", help="leave-last-out: interactions held out per user "
                                                               "(default 1)")
    split.add_argument("--test-fraction", type=float, help="tfrs: share of interactions held out (default 0.2)")
    split.add_argument("--cutoff", metavar="WHEN", help="time-cutoff: unix seconds or a date (2024-05-01)")


def add_latest_data_options(command: argparse.ArgumentParser) -> None:
    """The log a history tower reads a user's latest items from (recommend)."""
    from towerbridge.data.dataset import DATASETS

    latest = command.add_argument_group(
        "the user's latest data (default: the model's own copy of the data it was trained on); a history tower "
        "reads the user's items from it, and both towers leave out the items the user had in it")
    latest.add_argument("--data-dir", help="read the user's items from this dataset's files, interactions newer "
                                           "than the model included; items the model does not know are skipped")
    latest.add_argument("--dataset", choices=DATASETS, help="which dataset --data-dir holds (default: synthetic)")
    latest.add_argument("--dataset-spec", metavar="FILE", help="your own tables, described in a TOML or YAML file")


def check_data_paths(args: argparse.Namespace) -> None:
    """--data-dir and --dataset-spec name what exists, checked before any work."""
    if args.data_dir and not Path(args.data_dir).is_dir():
        raise ConfigError(f"--data-dir {args.data_dir}: not a directory")
    if args.dataset_spec and not Path(args.dataset_spec).is_file():
        raise ConfigError(f"--dataset-spec {args.dataset_spec}: file not found")


def latest_interactions(args: argparse.Namespace):
    """The interactions (user_id, item_id, timestamp) of the data given to recommend, or
    None for the model's own copy."""
    if not (args.data_dir or args.dataset_spec or args.dataset):
        return None
    check_data_paths(args)
    from towerbridge.data.dataset import load

    dataset = load(args.dataset or "synthetic", args.data_dir, args.dataset_spec)
    return dataset.interactions[["user_id", "item_id", "timestamp"]]


def add_build_options(command: argparse.ArgumentParser, default_alias: str, config) -> None:
    """Milvus, index, training and evaluation options (run, rebuild, serve)."""
    command.add_argument("--milvus-uri", help="Milvus to use (default: MILVUS_URI, else the embedded server)")
    command.add_argument("--alias", default=default_alias, help=f"alias readers query (default: {default_alias})")
    index = command.add_argument_group("index (default: chosen from the data)")
    index.add_argument("--index", choices=("auto", "ivf_pq", "scann"), default=defaults.INDEX_TYPE.lower(),
                       help="auto: ivf_pq, and scann where ivf_pq's tuned search falls short of --target-recall "
                            "(the version's record and the report say so; the next rebuild of a catalog that size "
                            "goes straight to scann; --m or --nbits choose ivf_pq); ivf_pq: product "
                            "quantization, 8-bit codes; scann: Milvus' SIMD fast-scan IVF with "
                            "4-bit codes whose best candidates are re-scored exactly on the raw vectors (reorder_k, "
                            "tuned with nprobe), for higher recall at the same speed on large catalogs; it keeps "
                            f"the raw vectors in memory beside the codes (BENCHMARKS.md). Default "
                            f"{defaults.INDEX_TYPE.lower()}")
    index.add_argument("--nlist", type=int, help="IVF lists (default about 4·sqrt(items), at most items/39)")
    index.add_argument("--m", type=int, help="ivf_pq: PQ sub-quantizers; must divide the vector dimension (default: "
                                             "the dimension, one code per coordinate)")
    index.add_argument("--nbits", type=int, help="ivf_pq: bits per PQ code (default 8)")
    index.add_argument("--keep-versions", type=int, default=defaults.KEEP_VERSIONS, metavar="N",
                       help=f"collection versions to keep; older ones are dropped (default {defaults.KEEP_VERSIONS})")
    index.add_argument("--embed-workers", type=int, default=defaults.EMBED_WORKERS, metavar="N",
                       help="embed the catalog on a local Dask cluster of N worker processes (Prefect's "
                            "DaskTaskRunner), in shards written as .npy files then loaded into Milvus; "
                            f"default {defaults.EMBED_WORKERS}: in this process")
    index.add_argument("--dask-address", metavar="tcp://HOST:8786",
                       help="embed the catalog on this Dask cluster instead; its workers must read "
                            "TOWERBRIDGE_HOME (shared storage). docs/scale-out.md")
    training = command.add_argument_group("training and evaluation")
    training.add_argument("--user-tower", choices=USER_TOWERS,
                          help="the query tower: sequence (causal self-attention over the user's last items), "
                               "pooled (a recency-weighted average of them) or id (the user's id and features); "
                               f"default: {defaults.DEFAULT_USER_TOWER}, or {defaults.RANDOM_SPLIT_USER_TOWER} with "
                               "--protocol tfrs (a random split, where the held-out items are not the next ones)")
    training.add_argument("--epochs", type=int,
                          help="training epochs (default: the tower's, "
                               + ", ".join(f"{kind} {config.for_tower(kind).epochs}" for kind in USER_TOWERS) + ")")
    training.add_argument("--train-budget", "--time-budget", dest="time_budget", type=budget, metavar="DURATION",
                          help="train for at most this long (seconds, or 45m, 1h30m, ...): training stops when it is "
                               "spent, in the middle of an epoch if need be, and keeps the best weights (by the "
                               "validation metric with --early-stopping, else the last); the report and the model's "
                               "manifest say where it stopped (default: no limit, all --epochs)")
    training.add_argument("--ids-only", action="store_true",
                          help="towers read only user and item ids, no other features")
    training.add_argument("--seed", type=int, default=config.seed, help="random seed for training")
    training.add_argument("--set", dest="tower_settings", action="append", default=[], type=tower_setting,
                          metavar="NAME=VALUE",
                          help="any other model setting by its name in towers/config.py (TowerConfig), "
                               "repeatable: --set attention_blocks=3 --set gated_blocks=false --set dropout=0.2 "
                               "(default: the tower's; the options above set their own). The model's manifest "
                               "records every setting")
    training.add_argument("--train-processes", type=int, default=defaults.TRAIN_PROCESSES, metavar="N",
                          help="train with N data-parallel processes on this machine (PyTorch DDP: each trains on "
                               "its own shard of the users and the gradients are summed, so all end with the same "
                               "weights; gloo on CPUs, nccl on GPUs; the cores are shared out between them). For "
                               "several machines, torchrun -m towerbridge.towers.distributed (docs/scale-out.md). "
                               f"Default {defaults.TRAIN_PROCESSES}")
    training.add_argument("--eval-users", type=_users, metavar="N|all",
                          help=f"evaluate a seeded random sample of N users where more have held-out "
                               f"interactions; all: every one of them (default {defaults.EVAL_USERS:,})")


def add_rebuild_options(command: argparse.ArgumentParser, default_alias: str, config) -> None:
    add_data_options(command)
    add_build_options(command, default_alias, config)
    checks = command.add_argument_group("validation (the candidate serves only if every check passes)")
    checks.add_argument("--reuse-model", action="store_true",
                        help="skip training: re-index the latest model under TOWERBRIDGE_HOME/models")
    checks.add_argument("--from-scratch", action="store_true",
                        help="train a new model from random weights (by default the serving version's model is "
                             "continued on today's data, when it has the same shape and dataset)")
    checks.add_argument("--continual-epochs", type=int, default=defaults.CONTINUAL_EPOCHS, metavar="N",
                        help="epochs over the whole log when the serving model is continued, unless --epochs is "
                             f"given (default {defaults.CONTINUAL_EPOCHS})")
    checks.add_argument("--continual-budget", type=budget, default=defaults.CONTINUAL_BUDGET_S, metavar="DURATION",
                        help="the most a continued training may take, unless --train-budget is given (default "
                             f"{defaults.CONTINUAL_BUDGET_S / 60:g}m: at a million items, two passes over the log)")
    checks.add_argument("--replay", type=float, metavar="FRACTION",
                        help="when the serving model is continued, train only on what changed since its training "
                             "data (users whose history grew; for the id tower, new interactions) and this "
                             "fraction of the rest, each epoch much shorter than the whole log's (default: the "
                             "whole log)"),
    checks.add_argument("--target-recall", type=float, default=defaults.TARGET_RECALL,
                        help="Milvus' recall@100 against exact search must reach this after tuning nprobe "
                             f"(default {defaults.TARGET_RECALL})")
    checks.add_argument("--metrics", default=",".join(defaults.GATE_METRICS),
                        help="metrics on which the candidate and the serving model are compared, both ranking "
                             "the same users of today's data through Milvus (default: "
                             f"{','.join(defaults.GATE_METRICS)})")
    checks.add_argument("--tolerance", type=float, default=defaults.GATE_TOLERANCE,
                        help="the margin: the candidate is rejected only when a metric's confidence interval "
                             "for its mean per-user difference (candidate - serving) lies wholly below "
                             f"-tolerance (absolute, default {defaults.GATE_TOLERANCE})")
    checks.add_argument("--confidence", type=float, default=defaults.GATE_CONFIDENCE,
                        help="the level of that interval, between 0 and 1 (normal approximation of the paired "
                             f"per-user differences; default {defaults.GATE_CONFIDENCE})")


def budget(text: str) -> float:
    try:
        return duration_seconds(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def tower_setting(text: str) -> tuple[str, object]:
    try:
        return parse_setting(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def ks_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        message = f"expected comma-separated whole numbers such as 1,10,100, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None


def history_list(text: str) -> list[str]:
    """--history: item ids, oldest first, comma-separated."""
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise ConfigError(f"--history: expected item ids separated by commas, oldest first (e.g. 50,172,133), "
                          f"got {text!r}")
    return items


def check_k(k: int) -> None:
    if not 1 <= k <= 16384:
        raise ConfigError(f"-k must be between 1 and 16384 (Milvus' limit), got {k}")


def data_options(args: argparse.Namespace) -> DataOptions:
    """The dataset, filter and split options, checked first."""
    check_data_paths(args)
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


# An options field as the command line names it, where that is not --<the field with dashes>.
OPTION_NAMES = {"early_stopping_patience": "--early-stopping", "index_type": "--index", "use_features": "--ids-only",
                "tower_settings": "--set"}


def option_name(field: str) -> str:
    return OPTION_NAMES.get(field, "--" + field.replace("_", "-"))


@contextmanager
def refused() -> Iterator[None]:
    """Around building options objects: the value they refuse first, as the ConfigError the
    command prints, naming the option as it was given."""
    try:
        yield
    except ValidationError as invalid:
        error = invalid.errors()[0]
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, OptionError):
            raise ConfigError(cause.says(option_name)) from None
        raise ConfigError(f"{'.'.join(map(str, error['loc']))}: {error['msg']}") from None


def _users(text: str) -> int | str:
    if text.strip().lower() == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of users or 'all', not {text!r}") from None


def eval_users(args: argparse.Namespace) -> dict:
    """--eval-users as EvaluateOptions takes it: absent (its default), a number, or None (all)."""
    if args.eval_users is None:
        return {}
    return {"eval_users": None if args.eval_users == "all" else args.eval_users}


def given(**values) -> dict:
    """The values the command line was given; the rest (None) take the options' defaults."""
    return {key: value for key, value in values.items() if value is not None}


# TrainOptions' model settings that have an option of their own, by the option's dest: where the
# command has that option, --set refuses the setting and names the option
OWN_OPTIONS = {"user_tower": "user_tower", "epochs": "epochs", "time_budget": "time_budget",
               "use_features": "ids_only", "seed": "seed", "early_stopping_patience": "early_stopping"}


def train_options(args: argparse.Namespace, **more) -> TrainOptions:
    settings = dict(args.tower_settings)
    # a setting TrainOptions holds but this command has no option for (temperature, vector_dim;
    # early_stopping_patience outside `run`) is given by --set
    fields = {name: settings.pop(name) for name in list(settings)
              if name in TrainOptions.model_fields and not hasattr(args, OWN_OPTIONS.get(name, name))}
    return TrainOptions(data=data_options(args), **given(user_tower=args.user_tower, epochs=args.epochs,
                                                                 time_budget=args.time_budget),
                        use_features=not args.ids_only, seed=args.seed, train_processes=args.train_processes,
                        tower_settings=settings, **fields, **more)


def index_options(args: argparse.Namespace, **more) -> IndexOptions:
    index = IndexSettings(index_type=args.index, **given(nlist=args.nlist, m=args.m, nbits=args.nbits))
    return IndexOptions(alias=args.alias, index_params=index, keep_versions=args.keep_versions,
                        embed_workers=args.embed_workers, **given(dask_address=args.dask_address), **more)


def pipeline_options(args: argparse.Namespace) -> PipelineOptions:
    """`run`'s options, checked before any work."""
    with refused():
        return PipelineOptions(train=train_options(args, early_stopping_patience=args.early_stopping),
                               index=index_options(args),
                               evaluate=EvaluateOptions(**given(ks=args.ks), **eval_users(args)),
                               **given(report_dir=args.report_dir, milvus_uri=args.milvus_uri))


def rebuild_options(args: argparse.Namespace) -> RebuildOptions:
    """`rebuild`'s and `serve`'s options, checked before any work."""
    metrics = [metric.strip() for metric in args.metrics.split(",") if metric.strip()]
    with refused():
        return RebuildOptions(train=train_options(args), index=index_options(args, target_recall=args.target_recall),
                              evaluate=EvaluateOptions(**eval_users(args)),
                              gate=GateOptions(tolerance=args.tolerance, confidence=args.confidence,
                                              **given(metrics=metrics or None)),
                              reuse_model=args.reuse_model, from_scratch=args.from_scratch,
                              continual_epochs=args.continual_epochs, continual_budget=args.continual_budget,
                              **given(milvus_uri=args.milvus_uri, replay=args.replay))
