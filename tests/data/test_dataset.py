import pandas as pd
import pytest

from towerbridge.data import dataset
from towerbridge.errors import DataError


def write(directory, interactions, items):
    directory.mkdir(exist_ok=True)
    dataset.write_parquet(pd.DataFrame(interactions), directory / "interactions.parquet")
    dataset.write_parquet(pd.DataFrame(items), directory / "items.parquet")
    return directory


GOOD_ITEMS = {"item_id": [1, 2], "title": ["A", "B"], "genres": ["Drama", "Comedy|Drama"]}
GOOD_INTERACTIONS = {"user_id": [1, 1, 2], "item_id": [1, 2, 2], "timestamp": [1, 2, 3]}


def test_reads_a_valid_directory(tmp_path):
    loaded = dataset.load("synthetic", write(tmp_path / "d", GOOD_INTERACTIONS, GOOD_ITEMS))
    assert loaded.interactions["item_id"].tolist() == [1, 2, 2]
    assert loaded.items["genres"].tolist() == ["Drama", "Comedy|Drama"]


@pytest.mark.parametrize("interactions, items, message", [
    ({"user_id": [1], "item": [1], "timestamp": [1]}, GOOD_ITEMS, r"column\(s\) \['item_id'\] missing"),
    ({"user_id": [], "item_id": [], "timestamp": []}, GOOD_ITEMS, "interactions table is empty"),
    ({"user_id": [1, 1], "item_id": [1, 99], "timestamp": [1, 2]}, GOOD_ITEMS,
     r"1 interaction\(s\) reference items absent from the items table \(1 distinct ids\), e.g. item_id \[99\]; "
     r"pass --drop-unknown-items to drop them"),
    ({"user_id": [1.5], "item_id": [1], "timestamp": [1]}, GOOD_ITEMS,
     "interactions.user_id must hold integer or string ids, found dtype float64"),
    ({"user_id": [1], "item_id": ["a"], "timestamp": [1]}, GOOD_ITEMS,
     "items.item_id holds int64 but interactions.item_id holds"),
    (GOOD_INTERACTIONS, {"item_id": [1, 1, 2], "title": ["A", "A", "B"], "genres": ["", "", ""]},
     "item_id 1 appears more than once"),
])
def test_bad_tables_name_the_problem(tmp_path, interactions, items, message):
    directory = write(tmp_path / "d", interactions, items)
    with pytest.raises(DataError, match=message) as error:
        dataset.load("synthetic", directory)
    assert str(directory) in str(error.value)


def test_missing_directory_and_unknown_dataset(tmp_path):
    with pytest.raises(DataError, match="data directory not found"):
        dataset.load("synthetic", tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="expected a directory, found a file"):
        dataset.load("synthetic", tmp_path / "file")
    with pytest.raises(DataError, match="unknown dataset 'movielens'; known: synthetic"):
        dataset.load("movielens")


def test_not_parquet(tmp_path):
    directory = write(tmp_path / "d", GOOD_INTERACTIONS, GOOD_ITEMS)
    (directory / "items.parquet").write_text("user,item\n1,2\n")
    with pytest.raises(DataError, match="items.parquet: not a readable Parquet file"):
        dataset.load("synthetic", directory)
