"""Datasets in one canonical shape, read and validated at the boundary.

interactions: ``user_id``, ``item_id`` (integer or string ids), ``timestamp`` (int64 unix
    seconds), optionally ``rating``
items: ``item_id`` (unique), ``title`` (str), ``genres`` (str, ``|``-separated), optionally
    more feature columns (``release_date``, ``year``, ...)
users: optional; ``user_id`` (unique) and feature columns (``age``, ``gender``, ...)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from towerbridge import settings
from towerbridge.data import fetch, generic, movielens
from towerbridge.data.synthetic import SyntheticSpec, generate
from towerbridge.errors import DataError

# name -> reader of (interactions, items, users) from a directory
READERS = {
    "movielens-100k": movielens.load_100k,
    "movielens-1m": movielens.load_1m,
    "movielens-10m": movielens.load_1m,
    "movielens-latest": movielens.load_latest,
}
DATASETS = ("synthetic", *READERS)
MOVIELENS_FILES = {
    "movielens-100k": "u.data, u.item, u.user",
    "movielens-1m": "ratings.dat, movies.dat, users.dat",
    "movielens-10m": "ratings.dat, movies.dat",
    "movielens-latest": "ratings.csv, movies.csv",
}
INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp")
ITEM_COLUMNS = ("item_id", "title", "genres")


@dataclass
class Dataset:
    name: str
    interactions: pd.DataFrame
    items: pd.DataFrame
    users: pd.DataFrame | None = None
    # feature columns declared in a dataset spec: {"user": {column: kind}, "item": {...}}
    feature_kinds: dict = field(default_factory=lambda: {"user": {}, "item": {}})
    # what validation dropped, when asked to (e.g. interactions with unknown items)
    dropped: dict = field(default_factory=dict)


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write atomically: a reader never sees a half-written file."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    settings.write_atomic(path, lambda partial: pq.write_table(table, partial))


def read_parquet(path: Path, columns: tuple[str, ...], all_columns: bool = False) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: file not found" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise DataError(f"{path}: not a readable Parquet file ({error})") from None
    missing = [column for column in columns if column not in schema.names]
    if missing:
        raise DataError(f"{path}: column(s) {missing} missing; found: {schema.names}")
    return pq.read_table(path, columns=None if all_columns else list(columns)).to_pandas()


def _is_id(column: pd.Series) -> bool:
    return pd.api.types.is_integer_dtype(column) or pd.api.types.is_string_dtype(column) \
        or column.dtype == object


def validate(dataset: Dataset, source: str, drop_unknown_items: bool = False) -> Dataset:
    """Check the invariants every later step relies on; raise DataError naming ``source``.

    Ids may be integers or strings (consistently per table). Interactions that name items
    absent from the items table are an error, or dropped and counted with ``drop_unknown_items``.
    """
    interactions, items = dataset.interactions, dataset.items
    if interactions.empty:
        raise DataError(f"{source}: the interactions table is empty")
    if items.empty:
        raise DataError(f"{source}: the items table is empty")
    for column in INTERACTION_COLUMNS:
        nulls = int(interactions[column].isna().sum())
        if nulls:
            raise DataError(f"{source}: {nulls} null value(s) in interactions.{column}")
    if not pd.api.types.is_integer_dtype(interactions["timestamp"]):
        raise DataError(f"{source}: interactions.timestamp must hold unix seconds (integers), "
                        f"found dtype {interactions['timestamp'].dtype}")
    for column in ("user_id", "item_id"):
        if not _is_id(interactions[column]):
            raise DataError(f"{source}: interactions.{column} must hold integer or string ids, "
                            f"found dtype {interactions[column].dtype}")
    for table, name, key in ((items, "items", "item_id"), (dataset.users, "users", "user_id")):
        if table is None:
            continue
        if key not in table.columns or not _is_id(table[key]):
            raise DataError(f"{source}: the {name} table needs a {key} column of integer or string ids; "
                            f"found {list(table.columns)}")
        if pd.api.types.is_integer_dtype(table[key]) != pd.api.types.is_integer_dtype(interactions[key]):
            raise DataError(f"{source}: {name}.{key} holds {table[key].dtype} but interactions.{key} holds "
                            f"{interactions[key].dtype}; ids must be of one kind")
        duplicated = table[key][table[key].duplicated()]
        if len(duplicated):
            raise DataError(f"{source}: {key} {duplicated.iloc[0]} appears more than once in {name} "
                            f"({len(duplicated)} duplicate ids)")
    dropped = dict(dataset.dropped)
    unknown = ~interactions["item_id"].isin(items["item_id"])
    if unknown.any():
        first = interactions.loc[unknown, "item_id"].unique()[:5].tolist()
        message = (f"{int(unknown.sum())} interaction(s) reference items absent from the items table "
                   f"({interactions.loc[unknown, 'item_id'].nunique()} distinct ids), e.g. item_id {first}")
        if not drop_unknown_items:
            raise DataError(f"{source}: {message}; pass --drop-unknown-items to drop them")
        interactions = interactions[~unknown].reset_index(drop=True)
        dropped["unknown_items"] = {"interactions": int(unknown.sum()), "examples": [str(x) for x in first]}
        if interactions.empty:
            raise DataError(f"{source}: no interactions are left after dropping unknown items ({message})")
    items = items.assign(title=items["title"].fillna("").astype(str), genres=items["genres"].fillna("").astype(str))
    return Dataset(dataset.name, interactions.astype({"timestamp": "int64"}), items, dataset.users,
                   dataset.feature_kinds, dropped)


def synthetic(spec: SyntheticSpec | None = None) -> Path:
    """Generate the synthetic dataset once under TOWERBRIDGE_HOME; return its directory."""
    spec = spec or SyntheticSpec()
    directory = settings.state_dir("datasets") / spec.name
    if not (directory / "dataset.json").exists():
        directory.mkdir(parents=True, exist_ok=True)
        interactions, items = generate(spec)
        write_parquet(interactions, directory / "interactions.parquet")
        write_parquet(items, directory / "items.parquet")
        record = {"name": "synthetic", "spec": spec.__dict__}
        settings.write_atomic(directory / "dataset.json", json.dumps(record, indent=2))
    return directory


def _directory(data_dir: str | Path) -> Path:
    directory = Path(data_dir)
    if not directory.exists():
        raise DataError(f"{directory}: data directory not found")
    if not directory.is_dir():
        raise DataError(f"{directory}: expected a directory, found a file")
    return directory


def load(name: str = "synthetic", data_dir: str | Path | None = None, spec_file: str | Path | None = None,
         drop_unknown_items: bool = False) -> Dataset:
    """Load a dataset by name, or from a dataset spec file.

    synthetic: generated on first use; with a ``data_dir``, read ``interactions.parquet``,
        ``items.parquet`` and, if present, ``users.parquet`` from there.
    movielens-*: the files of that MovieLens release, from ``data_dir`` or a fetched copy.
    spec_file: a TOML or YAML file describing your own tables (see generic.py).
    """
    if spec_file:
        spec = generic.parse_spec(spec_file)
        interactions, items, users, kinds = generic.load_spec(spec)
        return validate(Dataset(name, interactions, items, users, kinds), str(spec.source), drop_unknown_items)
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    if name in READERS:
        data_dir = data_dir or fetch.fetched_dir(name)
        if not data_dir:
            archives = [archive for archive, info in fetch.ARCHIVES.items() if info.reader == name]
            raise DataError(f"{name} needs --data-dir, the directory holding its files "
                            f"({MOVIELENS_FILES[name]}), or a copy from `towerbridge data fetch "
                            f"{' | '.join(archives)}`")
        interactions, items, users = READERS[name](_directory(data_dir))
        return validate(Dataset(name, interactions, items, users), str(data_dir), drop_unknown_items)
    directory = _directory(data_dir) if data_dir else synthetic()
    users_file = directory / "users.parquet"
    dataset = Dataset(
        name,
        read_parquet(directory / "interactions.parquet", INTERACTION_COLUMNS),
        read_parquet(directory / "items.parquet", ITEM_COLUMNS, all_columns=True),
        read_parquet(users_file, ("user_id",), all_columns=True) if users_file.exists() else None,
    )
    return validate(dataset, str(directory), drop_unknown_items)
