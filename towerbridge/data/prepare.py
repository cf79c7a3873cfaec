"""Prepare a dataset for training and evaluation: load and validate it, filter it, split it
for its protocol, and write the parts as Parquet with a summary of every count.

Only pandas and pyarrow here (no torch, Prefect or pymilvus), so the command line checks a
dataset in about a second, before it starts any server.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from towerbridge import settings
from towerbridge.data import dataset as datasets
from towerbridge.data import generic
from towerbridge.data.filters import Filters
from towerbridge.data.filters import apply as apply_filters
from towerbridge.data.options import DataOptions
from towerbridge.data.split import SplitOptions, scorable, split
from towerbridge.errors import DataError


def prepare_data(options: DataOptions, out_dir: str) -> str:
    """Load and validate a dataset, filter it, split it for its protocol, and write
    ``items/train/held_out.parquet`` (and ``users.parquet`` when the dataset has users).

    summary.json records every count: what the filters removed, unknown items dropped,
    held-out interactions that cannot be scored and why.
    """
    dataset, protocol, spec_file = options.dataset, options.protocol, options.spec_file
    data = datasets.load(dataset, options.data_dir, spec_file, options.drop_unknown_items)
    spec = generic.parse_spec(spec_file) if spec_file else None
    spec_filters = spec.filters if spec else {}
    chosen = Filters.from_dict({**spec_filters, **options.filters})
    interactions, filter_report = apply_filters(data.interactions, chosen)
    items = data.items
    if chosen.min_item_interactions > 1:  # rare items leave the catalog, not only the log
        items = items[items["item_id"].isin(interactions["item_id"])].reset_index(drop=True)
    split_options = SplitOptions(**options.split_options)
    train_part, held_out = split(interactions, protocol, split_options)
    held_out, unscorable = scorable(train_part, held_out, protocol)
    if held_out.empty:
        raise DataError(f"{spec.name if spec else dataset}: no held-out interaction can be scored ({unscorable}); "
                        "change the protocol or the filters")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    datasets.write_parquet(items, out / "items.parquet")
    if data.users is not None:
        datasets.write_parquet(data.users, out / "users.parquet")
    datasets.write_parquet(train_part, out / "train.parquet")
    datasets.write_parquet(held_out, out / "held_out.parquet")
    summary = {
        "dataset": spec.name if spec else dataset,  # a spec file's run is labelled with its name
        "source": str(spec_file or options.data_dir or "built-in synthetic"),
        "protocol": protocol,
        "split": split_options.__dict__,
        "users": int(interactions["user_id"].nunique()),
        "items": len(items),
        "interactions": len(interactions),
        "train": len(train_part),
        "held_out": len(held_out),
        "filters": {"settings": chosen.to_dict(), "steps": filter_report},
        "dropped": data.dropped,
        "unscorable_held_out": unscorable,
        "feature_kinds": data.feature_kinds,
        "id_type": "int64" if pd.api.types.is_integer_dtype(items["item_id"]) else "string",
    }
    settings.write_atomic(out / "summary.json", json.dumps(summary, indent=2))
    return str(out)


def read_summary(prepared_dir: str) -> dict:
    """The summary ``prepare_data`` wrote: a check that ``prepared_dir`` is prepared data."""
    path = Path(prepared_dir) / "summary.json"
    if not path.is_file():
        raise DataError(f"{prepared_dir}: not a prepared dataset (no summary.json); "
                        "prepare one with towerbridge.data.prepare.prepare_data")
    return json.loads(path.read_text())
