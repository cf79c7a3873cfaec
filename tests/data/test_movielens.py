"""MovieLens 100K reader on small files written here, and on the real data when present."""

import pytest

from tests.conftest import SHARED_ML100K
from towerbridge.data import dataset
from towerbridge.errors import DataError

ITEM_LINE = "{id}|Movie {id} (1995)|01-Jan-1995||http://example.org|" + "|".join(["0"] * 18) + "|1"


def write_100k(directory, data=None, items=None, users=None):
    directory.mkdir(exist_ok=True)
    (directory / "u.data").write_text(data if data is not None else "1\t1\t5\t881250949\n2\t2\t3\t891717742\n")
    (directory / "u.item").write_text(items if items is not None else
                                      "\n".join(ITEM_LINE.format(id=i) for i in (1, 2)) + "\n", encoding="latin-1")
    (directory / "u.user").write_text(users if users is not None else "1|24|M|technician|85711\n2|53|F|other|94043\n")
    return directory


def test_reads_all_three_files(tmp_path):
    loaded = dataset.load("movielens-100k", write_100k(tmp_path / "ml"))
    assert loaded.interactions.to_dict("list") == {
        "user_id": [1, 2], "item_id": [1, 2], "rating": [5, 3], "timestamp": [881250949, 891717742]}
    assert loaded.items["genres"].tolist() == ["Western", "Western"]
    assert loaded.items["release_date"].tolist() == [788918400, 788918400]  # 1995-01-01 UTC
    assert loaded.users[["age", "gender", "occupation"]].values.tolist() == [[24, "M", "technician"],
                                                                          [53, "F", "other"]]


def test_latin1_titles(tmp_path):
    items = ITEM_LINE.format(id=1).replace("Movie 1", "Café Noir") + "\n" + ITEM_LINE.format(id=2) + "\n"
    (tmp_path / "ml").mkdir()
    write_100k(tmp_path / "ml", items="")
    (tmp_path / "ml" / "u.item").write_bytes(items.encode("latin-1"))
    assert dataset.load("movielens-100k", tmp_path / "ml").items["title"][0] == "Café Noir (1995)"


@pytest.mark.parametrize("data, message", [
    ("1\t1\t5\t881250949\n2\t2\t3\n", r"u.data, line 2: expected 4 tab-separated fields, found 3"),
    ("1,1,5,881250949\n", r"u.data, line 1: expected 4 tab-separated fields, found 1 \(no tab in the line: "
                          r"wrong delimiter\?\)"),
    ("1\t1\t5\t881250949\nu7\t1\t4\t881250950\n", r"u.data, line 2: field 1 \(user id\) must be an integer, "
                                                  r"found 'u7'"),
    ("1\t9\t5\t881250949\n", r"1 interaction\(s\) reference items absent from the items table \(1 distinct ids\), "
                             r"e.g. item_id \[9\]"),
    ("", r"u.data: the file is empty"),
])
def test_bad_ratings_name_file_and_line(tmp_path, data, message):
    with pytest.raises(DataError, match=message):
        dataset.load("movielens-100k", write_100k(tmp_path / "ml", data=data))


def test_missing_files_and_directory(tmp_path):
    directory = write_100k(tmp_path / "ml")
    (directory / "u.user").unlink()
    with pytest.raises(DataError, match=r"u.user: file not found"):
        dataset.load("movielens-100k", directory)
    with pytest.raises(DataError, match="movielens-100k needs --data-dir, the directory holding its files "
                                        r"\(u.data, u.item, u.user\)"):
        dataset.load("movielens-100k")


@pytest.mark.skipif(not SHARED_ML100K.is_dir(), reason=f"MovieLens 100K not found at {SHARED_ML100K}")
def test_the_real_movielens_100k():
    loaded = dataset.load("movielens-100k", SHARED_ML100K)
    assert len(loaded.interactions) == 100_000
    assert (loaded.interactions["user_id"].nunique(), len(loaded.items), len(loaded.users)) == (943, 1682, 943)
    assert loaded.items.set_index("item_id").loc[1, "title"] == "Toy Story (1995)"
    assert loaded.items.set_index("item_id").loc[1, "genres"] == "Animation|Children's|Comedy"
    assert loaded.items["release_date"].isna().sum() == 1  # item 267, "unknown"
