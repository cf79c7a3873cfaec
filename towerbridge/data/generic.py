"""Your own interaction logs, described once in a dataset spec file (TOML or YAML).

    [interactions]
    path = "events.csv"        # a CSV file, a Parquet file, or a directory of Parquet files
    user = "customer_id"       # column names in that table
    item = "sku"
    timestamp = "ts"           # unix seconds, or date-times such as 2024-05-01T12:00:00Z
    rating = "stars"           # optional
    delimiter = ","            # CSV only (default ",")

    [items]                    # optional: without it, the catalog is the items seen in interactions
    path = "products.parquet"
    id = "sku"
    title = "name"             # optional
    genres = "categories"      # optional, values separated by `separator` (default "|")
    features = { price = "numeric", brand = "categorical" }   # optional, column = kind

    [users]                    # optional
    path = "customers.parquet"
    id = "customer_id"
    features = { age = "bucketized", country = "categorical" }

    [filters]                  # optional, the same as the command-line options
    min_rating = 4
    deduplicate = "keep-last"
    min_user_interactions = 2
    min_item_interactions = 1

    name = "shop-events"       # optional, top level: the dataset's name in reports, tables and
                               # version records (default: the file's stem; for a file named
                               # spec.toml or spec.yaml, its folder's name)

Paths are relative to the spec file. Ids may be integers or strings. Only the named
columns are read (column projection), Parquet and CSV through pyarrow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import tomllib

from towerbridge.data.kinds import KINDS
from towerbridge.errors import DataError


@dataclass
class TableSpec:
    path: Path
    columns: dict[str, str]  # our name -> the file's column name
    delimiter: str = ","
    features: dict[str, str] = field(default_factory=dict)  # the file's column -> feature kind
    separator: str = "|"


@dataclass
class DatasetSpec:
    source: Path
    interactions: TableSpec
    items: TableSpec | None
    users: TableSpec | None
    filters: dict
    name: str = ""


def _load_file(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: dataset spec file not found")
    text = path.read_text()
    if path.suffix.lower() == ".toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise DataError(f"{path}: not valid TOML ({error})") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise DataError(f"{path}: YAML specs need PyYAML (pip install pyyaml), or write the spec as TOML") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise DataError(f"{path}: not valid YAML ({error})") from None
        if not isinstance(loaded, dict):
            raise DataError(f"{path}: expected a mapping at the top level")
        return loaded
    raise DataError(f"{path}: a dataset spec must end in .toml, .yaml or .yml")


def _table(values: dict, section: str, required: tuple[str, ...], optional: tuple[str, ...],
           source: Path) -> TableSpec:
    if not isinstance(values, dict):
        raise DataError(f"{source}: [{section}] must be a table of settings")
    known = {"path", "delimiter", "features", "separator", *required, *optional}
    unknown = sorted(set(values) - known)
    if unknown:
        raise DataError(f"{source}: [{section}] has unknown setting(s) {unknown}; known: {sorted(known)}")
    missing = [key for key in ("path", *required) if not values.get(key)]
    if missing:
        raise DataError(f"{source}: [{section}] needs {', '.join(missing)}")
    features = values.get("features") or {}
    for column, kind in features.items():
        if kind not in KINDS or kind in ("id", "history"):
            raise DataError(f"{source}: [{section}] feature {column!r} has kind {kind!r}; use one of "
                            f"{', '.join(k for k in KINDS if k not in ('id', 'history'))}")
    columns = {key: values[key] for key in (*required, *optional) if values.get(key)}
    return TableSpec(path=(source.parent / values["path"]).resolve(), columns=columns,
                     delimiter=values.get("delimiter", ","), features=dict(features),
                     separator=values.get("separator", "|"))


def parse_spec(path: str | Path) -> DatasetSpec:
    source = Path(path).resolve()
    values = _load_file(source)
    unknown = sorted(set(values) - {"name", "interactions", "items", "users", "filters"})
    if unknown:
        raise DataError(f"{source}: unknown section(s) {unknown}; known: name, interactions, items, users, filters")
    if "interactions" not in values:
        raise DataError(f"{source}: an [interactions] section is required")
    return DatasetSpec(
        source=source,
        interactions=_table(values["interactions"], "interactions", ("user", "item", "timestamp"),
                            ("rating",), source),
        items=_table(values["items"], "items", ("id",), ("title", "genres"), source) if "items" in values else None,
        users=_table(values["users"], "users", ("id",), (), source) if "users" in values else None,
        filters=dict(values.get("filters") or {}),
        name=_name(values.get("name"), source),
    )


def _name(value, source: Path) -> str:
    """The spec's ``name``, else its file's stem (a file named ``spec``: its folder's name)."""
    if value is None:
        return source.parent.name if source.stem.lower() == "spec" and source.parent.name else source.stem
    if not isinstance(value, str) or not value.strip() or len(value) > 100 or any(c in value for c in "\n\r\t|`"):
        raise DataError(f"{source}: name must be a short one-line text (at most 100 characters, no tabs, "
                        f"'|' or '`'), got {value!r}")
    return value.strip()


def read_table(spec: TableSpec, columns: list[str]) -> pd.DataFrame:
    """Read only ``columns`` (file column names) from a CSV file, a Parquet file or a
    directory of Parquet files."""
    path = spec.path
    if not path.exists():
        raise DataError(f"{path}: file or directory not found")
    try:
        if path.is_dir() or path.suffix.lower() in (".parquet", ".pq"):
            table = pads.dataset(path, format="parquet")
            missing = [c for c in columns if c not in table.schema.names]
            if missing:
                raise DataError(f"{path}: column(s) {missing} missing; found: {table.schema.names}")
            return table.to_table(columns=columns).to_pandas()
        header = _csv_header(path, spec.delimiter)
        missing = [c for c in columns if c not in header]
        if missing:
            hint = f" (one column only: is {spec.delimiter!r} the right delimiter?)" if len(header) == 1 else ""
            raise DataError(f"{path}: column(s) {missing} missing; found: {header}{hint}")
        return pacsv.read_csv(
            path, parse_options=pacsv.ParseOptions(delimiter=spec.delimiter),
            convert_options=pacsv.ConvertOptions(include_columns=columns, strings_can_be_null=True),
        ).to_pandas()
    except pa.ArrowInvalid as error:
        raise DataError(f"{path}: cannot be read ({str(error).splitlines()[0]})") from None


def _csv_header(path: Path, delimiter: str) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as handle:
        first = handle.readline().rstrip("\r\n")
    if not first:
        raise DataError(f"{path}: the file is empty")
    return [name.strip('"') for name in first.split(delimiter)]


def _where(spec: TableSpec, row: int) -> str:
    """How to point at a data row: a line number for CSV (after the header), a row index otherwise."""
    return f"line {row + 2}" if spec.path.is_file() and spec.path.suffix.lower() == ".csv" else f"row {row}"


def _ids(values: pd.Series, spec: TableSpec, column: str) -> pd.Series:
    """Integer ids stay integers; anything else becomes strings. Nulls are an error."""
    nulls = values.isna().to_numpy()
    if nulls.any():
        row = int(nulls.argmax())
        raise DataError(f"{spec.path}, {_where(spec, row)}: column {column!r} is empty (null id); "
                        f"{int(nulls.sum())} row(s) have no {column}")
    if pd.api.types.is_integer_dtype(values):
        return values.astype("int64")
    if pd.api.types.is_float_dtype(values) and (values % 1 == 0).all():
        return values.astype("int64")
    return values.astype(str)


def _seconds(values: pd.Series, spec: TableSpec, column: str) -> pd.Series:
    """Unix seconds from integers, whole floats, or date-time values/strings."""
    if pd.api.types.is_integer_dtype(values):
        return values.astype("int64")
    if pd.api.types.is_float_dtype(values) and values.notna().all() and (values % 1 == 0).all():
        return values.astype("int64")
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values if values.dt.tz is not None else values.dt.tz_localize("UTC")
        seconds = (parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    else:  # text: unix seconds where a value is a number, a date-time otherwise
        numbers = pd.to_numeric(values, errors="coerce")
        dates = pd.to_datetime(values.where(numbers.isna()), utc=True, errors="coerce", format="mixed")
        seconds = numbers.where(numbers.notna(), (dates - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1))
    bad = seconds.isna().to_numpy()
    if bad.any():
        row = int(bad.argmax())
        raise DataError(f"{spec.path}, {_where(spec, row)}: column {column!r} value {values.iloc[row]!r} is not "
                        "a timestamp (expected unix seconds or a date-time such as 2024-05-01T12:00:00Z)")
    return seconds.astype("int64")


def load_spec(spec: DatasetSpec) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None, dict]:
    """``(interactions, items, users, feature_kinds)`` in the canonical shape."""
    table = spec.interactions
    names = table.columns
    raw = read_table(table, list(names.values()))
    interactions = pd.DataFrame({
        "user_id": _ids(raw[names["user"]], table, names["user"]),
        "item_id": _ids(raw[names["item"]], table, names["item"]),
        "timestamp": _seconds(raw[names["timestamp"]], table, names["timestamp"]),
    })
    if "rating" in names:
        rating = pd.to_numeric(raw[names["rating"]], errors="coerce")
        bad = rating.isna().to_numpy()
        if bad.any():
            row = int(bad.argmax())
            raise DataError(f"{table.path}, {_where(table, row)}: column {names['rating']!r} value "
                            f"{raw[names['rating']].iloc[row]!r} is not a number")
        interactions["rating"] = rating.astype(float)

    feature_kinds: dict[str, dict[str, str]] = {"user": {}, "item": {}}
    if spec.items is not None:
        items_spec = spec.items
        wanted = [items_spec.columns["id"], *[items_spec.columns[k] for k in ("title", "genres")
                                              if k in items_spec.columns], *items_spec.features]
        raw_items = read_table(items_spec, list(dict.fromkeys(wanted)))
        id_column = items_spec.columns["id"]
        items = pd.DataFrame({"item_id": _ids(raw_items[id_column], items_spec, id_column)})
        items["title"] = raw_items[items_spec.columns["title"]].fillna("").astype(str) \
            if "title" in items_spec.columns else ""
        genres = raw_items[items_spec.columns["genres"]].fillna("").astype(str) \
            if "genres" in items_spec.columns else pd.Series("", index=items.index)
        items["genres"] = genres.str.replace(items_spec.separator, "|", regex=False) \
            if items_spec.separator != "|" else genres
        for column, kind in items_spec.features.items():
            items[column] = raw_items[column]
            feature_kinds["item"][column] = kind
    else:  # the catalog is what the interactions name
        items = pd.DataFrame({"item_id": pd.unique(interactions["item_id"])}).assign(title="", genres="")

    users = None
    if spec.users is not None:
        users_spec = spec.users
        raw_users = read_table(users_spec, list(dict.fromkeys([users_spec.columns["id"], *users_spec.features])))
        users = pd.DataFrame({"user_id": _ids(raw_users[users_spec.columns["id"]], users_spec,
                                              users_spec.columns["id"])})
        for column, kind in users_spec.features.items():
            users[column] = raw_users[column]
            feature_kinds["user"][column] = kind
    return interactions, items, users, feature_kinds
