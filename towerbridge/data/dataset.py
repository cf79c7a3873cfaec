"""Datasets in one canonical shape, read and validated at the boundary.

interactions: ``user_id`` (int64), ``item_id`` (int64), ``timestamp`` (int64 unix seconds)
items: ``item_id`` (int64, unique), ``title`` (str), ``genres`` (str, ``|``-separated)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from towerbridge import settings
from towerbridge.data.synthetic import SyntheticSpec, generate
from towerbridge.errors import DataError

DATASETS = ("synthetic",)
INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")
ITEM_COLUMNS = ("item_id", "title", "genres")


@dataclass
class Dataset:
    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write atomically: a reader never sees a half-written file."""
    partial = path.with_name(path.name + ".partial")
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), partial)
    partial.replace(path)


def read_parquet(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: file not found" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(f"{path}: not a readable Parquet file ({error})") from None
    missing = [column for column in columns if column not in schema.names]
    if missing:
        raise DataError(f"{path}: column(s) {missing} missing; found: {schema.names}")
    return pq.read_table(path, columns=list(columns)).to_pandas()


def validate(dataset: Dataset, source: str) -> Dataset:
    """Check the invariants every later step relies on; raise DataError naming `source`."""
    interactions, items = dataset.interactions, dataset.items
    if interactions.empty:
        raise DataError(f"{source}: the interactions table is empty")
    if items.empty:
        raise DataError(f"{source}: the items table is empty")
    for table, name, columns in ((interactions, "interactions", INTERACTION_COLUMNS), (items, "items", ("item_id",))):
        for column in columns:
            nulls = int(table[column].isna().sum())
            if nulls:
                raise DataError(f"{source}: {nulls} null value(s) in {name}.{column}")
            if not pd.api.types.is_integer_dtype(table[column]):
                raise DataError(f"{source}: {name}.{column} must hold integers, found dtype {table[column].dtype}")
    duplicated = items["item_id"][items["item_id"].duplicated()]
    if len(duplicated):
        raise DataError(f"{source}: item_id {duplicated.iloc[0]} appears more than once in items "
                        f"({len(duplicated)} duplicate ids)")
    unknown = ~interactions["item_id"].isin(items["item_id"])
    if unknown.any():
        first = interactions.loc[unknown, "item_id"].unique()[:5].tolist()
        raise DataError(f"{source}: {int(unknown.sum())} interaction(s) reference items absent from the "
                        f"items table, e.g. item_id {first}")
    items = items.assign(title=items["title"].fillna("").astype(str), genres=items["genres"].fillna("").astype(str))
    return Dataset(dataset.name, interactions.astype({c: "int64" for c in INTERACTION_COLUMNS}), items)


def synthetic(spec: SyntheticSpec | None = None) -> Path:
    """Generate the synthetic dataset once under TOWERBRIDGE_HOME; return its directory."""
    spec = spec or SyntheticSpec()
    directory = settings.state_dir("datasets") / spec.name
    if not (directory / "dataset.json").exists():
        directory.mkdir(parents=True, exist_ok=True)
        interactions, items = generate(spec)
        write_parquet(interactions, directory / "interactions.parquet")
        write_parquet(items, directory / "items.parquet")
        (directory / "dataset.json").write_text(json.dumps({"name": "synthetic", "spec": spec.__dict__}, indent=2))
    return directory


def load(name: str = "synthetic", data_dir: str | Path | None = None) -> Dataset:
    """Load a dataset by name. ``synthetic`` without a ``data_dir`` is generated on first use;
    with a ``data_dir`` it reads ``interactions.parquet`` and ``items.parquet`` from there."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    directory = Path(data_dir) if data_dir else synthetic()
    if not directory.exists():
        raise DataError(f"{directory}: data directory not found")
    if not directory.is_dir():
        raise DataError(f"{directory}: expected a directory, found a file")
    dataset = Dataset(
        name,
        read_parquet(directory / "interactions.parquet", INTERACTION_COLUMNS),
        read_parquet(directory / "items.parquet", ITEM_COLUMNS),
    )
    return validate(dataset, str(directory))
