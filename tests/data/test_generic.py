"""Your own tables described by a TOML or YAML spec: formats, ids, timestamps, errors."""

import textwrap

import pandas as pd
import pytest

from towerbridge.data import dataset
from towerbridge.errors import DataError

EVENTS = "customer,sku,when,stars\nc1,A-1,2024-05-01T10:00:00Z,5\nc1,B-2,2024-05-02T10:00:00Z,3\n" \
         "c2,A-1,1714600000,4\n"
PRODUCTS = "sku;name;cats;price\nA-1;Alpha, the first;x/y;9.5\nB-2;Beta;y;12\n"


def write(directory, files):
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if isinstance(content, pd.DataFrame):
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            content.to_parquet(directory / name)
        else:
            (directory / name).write_text(textwrap.dedent(content))
    return directory


SPEC = """
    [interactions]
    path = "events.csv"
    user = "customer"
    item = "sku"
    timestamp = "when"
    rating = "stars"

    [items]
    path = "products.csv"
    delimiter = ";"
    id = "sku"
    title = "name"
    genres = "cats"
    separator = "/"
    features = { price = "numeric" }
"""


def test_toml_spec_with_csv_string_ids_and_dates(tmp_path):
    root = write(tmp_path, {"events.csv": EVENTS, "products.csv": PRODUCTS, "shop.toml": SPEC})
    loaded = dataset.load("custom", spec_file=root / "shop.toml")
    assert loaded.interactions["user_id"].tolist() == ["c1", "c1", "c2"]
    assert loaded.interactions["timestamp"].tolist() == [1714557600, 1714644000, 1714600000]
    assert loaded.interactions["rating"].tolist() == [5.0, 3.0, 4.0]
    items = loaded.items.set_index("item_id")
    assert items.loc["A-1", "title"] == "Alpha, the first" and items.loc["A-1", "genres"] == "x|y"
    assert loaded.feature_kinds == {"user": {}, "item": {"price": "numeric"}}


def test_yaml_spec_with_a_parquet_directory_and_integer_ids(tmp_path):
    part = pd.DataFrame({"u": [1, 2], "i": [10, 11], "t": [100, 200]})
    root = write(tmp_path, {
        "log/part-0.parquet": part, "log/part-1.parquet": part.assign(t=[300, 400]),
        "spec.yaml": """
            interactions:
              path: log
              user: u
              item: i
              timestamp: t
        """,
    })
    loaded = dataset.load("custom", spec_file=root / "spec.yaml")
    assert len(loaded.interactions) == 4 and str(loaded.interactions["item_id"].dtype) == "int64"
    assert sorted(loaded.items["item_id"]) == [10, 11]  # no items table: the catalog is what is named


@pytest.mark.parametrize("events, message", [
    ("customer,sku,when,stars\nc1,A-1,not a date,5\n",
     r"events.csv, line 2: column 'when' value 'not a date' is not a timestamp"),
    ("customer,sku,when,stars\n,A-1,1714600000,5\n",
     r"events.csv, line 2: column 'customer' is empty \(null id\); 1 row\(s\) have no customer"),
    ("customer;sku;when;stars\nc1;A-1;1714600000;5\n",
     r"events.csv: column\(s\) \['customer', 'sku', 'when', 'stars'\] missing; found: \['customer;sku;when;stars'\] "
     r"\(one column only: is ',' the right delimiter\?\)"),
    ("customer,sku,when,stars\nc1,Z-9,1714600000,5\n",
     r"1 interaction\(s\) reference items absent from the items table \(1 distinct ids\), e.g. item_id \['Z-9'\]"),
    ("customer,sku,when,stars\nc1,A-1,1714600000,lots\n",
     r"events.csv, line 2: column 'stars' value 'lots' is not a number"),
    ("customer,sku,when,stars\n", r"the interactions table is empty"),
])
def test_bad_values_name_file_line_and_value(tmp_path, events, message):
    root = write(tmp_path, {"events.csv": events, "products.csv": PRODUCTS, "shop.toml": SPEC})
    with pytest.raises(DataError, match=message):
        dataset.load("custom", spec_file=root / "shop.toml")


def test_unknown_items_can_be_dropped_and_are_counted(tmp_path):
    events = EVENTS + "c2,Z-9,1714600001,4\nc3,Z-9,1714600002,2\n"
    root = write(tmp_path, {"events.csv": events, "products.csv": PRODUCTS, "shop.toml": SPEC})
    loaded = dataset.load("custom", spec_file=root / "shop.toml", drop_unknown_items=True)
    assert len(loaded.interactions) == 3
    assert loaded.dropped == {"unknown_items": {"interactions": 2, "examples": ["Z-9"]}}


@pytest.mark.parametrize("spec, message", [
    ("[interactions]\npath = 'events.csv'\nuser = 'customer'\n", r"\[interactions\] needs item, timestamp"),
    ("[interactions]\npath='e.csv'\nuser='u'\nitem='i'\ntimestamp='t'\ncolour='red'\n",
     r"\[interactions\] has unknown setting\(s\) \['colour'\]"),
    ("[events]\npath = 'events.csv'\n", r"unknown section\(s\) \['events'\]"),
    ("[interactions\n", r"not valid TOML"),
    (SPEC.replace('"numeric"', '"picture"'), r"feature 'price' has kind 'picture'; use one of"),
    (SPEC.replace("events.csv", "nothere.csv"), r"nothere.csv: file or directory not found"),
])
def test_bad_specs_are_explained(tmp_path, spec, message):
    root = write(tmp_path, {"events.csv": EVENTS, "products.csv": PRODUCTS, "shop.toml": spec})
    with pytest.raises(DataError, match=message):
        dataset.load("custom", spec_file=root / "shop.toml")


def test_a_spec_is_named_by_its_name_key_else_its_file(tmp_path):
    from towerbridge.data.generic import parse_spec

    write(tmp_path / "shop-2024", {"events.csv": EVENTS, "products.csv": PRODUCTS, "shop.toml": SPEC,
                                   "spec.toml": SPEC, "named.toml": 'name = "Shop events, May"\n' + SPEC})
    assert parse_spec(tmp_path / "shop-2024" / "shop.toml").name == "shop"
    assert parse_spec(tmp_path / "shop-2024" / "spec.toml").name == "shop-2024"  # a generic stem: the folder
    assert parse_spec(tmp_path / "shop-2024" / "named.toml").name == "Shop events, May"
    for bad in ('name = 3', 'name = "  "', 'name = "a|b"', f'name = "{"x" * 101}"'):
        (tmp_path / "shop-2024" / "bad.toml").write_text(bad + "\n" + textwrap.dedent(SPEC))
        with pytest.raises(DataError, match=r"bad.toml: name must be a short one-line text"):
            parse_spec(tmp_path / "shop-2024" / "bad.toml")


def test_spec_file_must_exist_and_have_a_known_suffix(tmp_path):
    with pytest.raises(DataError, match="dataset spec file not found"):
        dataset.load("custom", spec_file=tmp_path / "missing.toml")
    (tmp_path / "spec.json").write_text("{}")
    with pytest.raises(DataError, match=r"must end in .toml, .yaml or .yml"):
        dataset.load("custom", spec_file=tmp_path / "spec.json")
