"""MovieLens 1M / 10M (.dat) and latest (.csv) readers, on small files written here."""

import pytest

from towerbridge.data import dataset
from towerbridge.errors import DataError


def write(directory, files):
    directory.mkdir(exist_ok=True)
    for name, text in files.items():
        (directory / name).write_bytes(text.encode("latin-1") if name == "movies.dat" else text.encode())
    return directory


ONE_M = {
    "ratings.dat": "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n",
    "movies.dat": "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
                  "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n",
    "users.dat": "1::F::1::10::48067\n2::M::56::16::70072\n",
}
LATEST = {
    "ratings.csv": "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n2,3,2.5,964981250\n",
    "movies.csv": 'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n'
                  '3,"American President, The (1995)",(no genres listed)\n',
}


def test_movielens_1m(tmp_path):
    loaded = dataset.load("movielens-1m", write(tmp_path / "ml-1m", ONE_M))
    assert loaded.interactions[["user_id", "item_id", "rating"]].values.tolist() == [
        [1, 1193, 5], [1, 661, 3], [2, 1193, 4]]
    items = loaded.items.set_index("item_id")
    assert items.loc[661, "genres"] == "Animation|Children's|Musical" and items.loc[1193, "year"] == 1975
    assert loaded.users[["user_id", "gender", "age", "occupation"]].values.tolist() == [
        [1, "F", 1, "10"], [2, "M", 56, "16"]]


def test_movielens_10m_has_no_users_file(tmp_path):
    files = {name: text for name, text in ONE_M.items() if name != "users.dat"}
    loaded = dataset.load("movielens-10m", write(tmp_path / "ml-10M100K", files))
    assert loaded.users is None and len(loaded.interactions) == 3


def test_movielens_latest(tmp_path):
    loaded = dataset.load("movielens-latest", write(tmp_path / "ml-latest-small", LATEST))
    assert loaded.interactions["rating"].tolist() == [4.0, 4.5, 2.5]
    items = loaded.items.set_index("item_id")
    assert items.loc[3, "title"] == "American President, The (1995)"
    assert items.loc[3, "genres"] == "" and items.loc[3, "year"] == 1995


@pytest.mark.parametrize("name, files, message", [
    ("movielens-1m", {**ONE_M, "ratings.dat": "1::1193::5::978300760\n1::661::3\n"},
     r"ratings.dat, line 2: expected 4 '::'-separated fields: '1::661::3'"),
    ("movielens-1m", {**ONE_M, "ratings.dat": "1::1193::5::978300760\n1::6x1::3::978302109\n"},
     r"ratings.dat, line 2: MovieID must be an integer, found '6x1'"),
    ("movielens-1m", {**ONE_M, "movies.dat": "1193::Drama\n"},
     r"movies.dat, line 1: expected MovieID::Title::Genres"),
    ("movielens-latest", {**LATEST, "ratings.csv": "userId;movieId;rating;timestamp\n1;1;4.0;964982703\n"},
     r"ratings.csv: column\(s\) \['userId', 'movieId', 'rating', 'timestamp'\] missing from the header; .*"
     r"one column only: is the file separated by something other than ','\?"),
    ("movielens-latest", {**LATEST, "ratings.csv": "userId,movieId,rating,timestamp\n1,1,4.0,yesterday\n"},
     r"ratings.csv, line 2: timestamp must be an integer, found 'yesterday'"),
    ("movielens-latest", {**LATEST, "ratings.csv": "userId,movieId,rating,timestamp\n"},
     r"ratings.csv: the file has no rows"),
])
def test_bad_files_name_file_line_and_value(tmp_path, name, files, message):
    with pytest.raises(DataError, match=message):
        dataset.load(name, write(tmp_path / "d", files))


def test_missing_file(tmp_path):
    files = {name: text for name, text in LATEST.items() if name != "movies.csv"}
    with pytest.raises(DataError, match=r"movies.csv: file not found"):
        dataset.load("movielens-latest", write(tmp_path / "d", files))
