"""MovieLens in its own formats, read strictly.

100K:
    u.data   user id <TAB> item id <TAB> rating <TAB> unix timestamp
    u.item   latin-1, ``|``-separated: id | title | release date | video date | IMDb URL | 19 genre flags
    u.user   ``|``-separated: id | age | gender | occupation | zip code
    u.genre  genre name | flag position (names the 19 flags)
1M and 10M:
    ratings.dat  UserID::MovieID::Rating::Timestamp
    movies.dat   MovieID::Title::Genres (genres ``|``-separated)
    users.dat    UserID::Gender::Age::Occupation::Zip-code (1M only)
latest (latest-small, 25M, 32M):
    ratings.csv  userId,movieId,rating,timestamp (with header)
    movies.csv   movieId,title,genres (with header; titles quoted when they hold commas)

Every problem is reported with the file, the line and the offending value.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from towerbridge.errors import DataError

GENRES_DEFAULT = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
)


def _read_fields(path: Path, separator: str, n_fields: int, encoding: str) -> list[tuple[int, list[str]]]:
    """``(line number, fields)`` for every non-empty line, each with exactly ``n_fields`` fields."""
    if not path.is_file():
        raise DataError(f"{path}: file not found" + (" (it is a directory)" if path.is_dir() else ""))
    rows = []
    with open(path, encoding=encoding, newline="") as handle:
        for number, line in enumerate(handle, 1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            fields = line.split(separator)
            if len(fields) != n_fields:
                shown = line if len(line) <= 80 else line[:77] + "..."
                name = "tab" if separator == "\t" else repr(separator)
                hint = "" if separator in line else f" (no {name} in the line: wrong delimiter?)"
                raise DataError(f"{path}, line {number}: expected {n_fields} {name}-separated fields, "
                                f"found {len(fields)}{hint}: {shown!r}")
            rows.append((number, fields))
    if not rows:
        raise DataError(f"{path}: the file is empty")
    return rows


def _integers(path: Path, rows: list[tuple[int, list[str]]], column: int, name: str) -> np.ndarray:
    values = np.empty(len(rows), dtype=np.int64)
    for index, (number, fields) in enumerate(rows):
        try:
            values[index] = int(fields[column])
        except ValueError:
            raise DataError(f"{path}, line {number}: field {column + 1} ({name}) must be an integer, "
                            f"found {fields[column]!r}") from None
    return values


def _texts(rows: list[tuple[int, list[str]]], column: int) -> list[str]:
    return [fields[column] for _, fields in rows]


def read_ratings(path: Path) -> pd.DataFrame:
    rows = _read_fields(path, "\t", 4, "latin-1")
    return pd.DataFrame({
        "user_id": _integers(path, rows, 0, "user id"),
        "item_id": _integers(path, rows, 1, "item id"),
        "rating": _integers(path, rows, 2, "rating"),
        "timestamp": _integers(path, rows, 3, "timestamp"),
    })


def read_genres(path: Path) -> tuple[str, ...]:
    if not path.exists():
        return GENRES_DEFAULT
    rows = _read_fields(path, "|", 2, "latin-1")
    positions = _integers(path, rows, 1, "genre position")
    return tuple(name for _, name in sorted(zip(positions, _texts(rows, 0))))


def read_items(path: Path, genres: tuple[str, ...]) -> pd.DataFrame:
    rows = _read_fields(path, "|", 5 + len(genres), "latin-1")
    flags = [[field == "1" for field in fields[5:]] for _, fields in rows]
    release = pd.to_datetime(pd.Series(_texts(rows, 2)), format="%d-%b-%Y", errors="coerce", utc=True)
    return pd.DataFrame({
        "item_id": _integers(path, rows, 0, "movie id"),
        "title": _texts(rows, 1),
        "genres": ["|".join(name for name, flag in zip(genres, row_flags) if flag) for row_flags in flags],
        # unknown dates stay missing (nullable); the time feature gives them their own bucket
        "release_date": ((release - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)).astype("Int64"),
    })


def read_users(path: Path) -> pd.DataFrame:
    rows = _read_fields(path, "|", 5, "latin-1")
    return pd.DataFrame({
        "user_id": _integers(path, rows, 0, "user id"),
        "age": _integers(path, rows, 1, "age"),
        "gender": _texts(rows, 2),
        "occupation": _texts(rows, 3),
        "zip_code": _texts(rows, 4),
    })


def load_100k(directory: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``(interactions, items, users)`` from a MovieLens 100K directory."""
    genres = read_genres(directory / "u.genre")
    items = read_items(directory / "u.item", genres)
    return read_ratings(directory / "u.data"), items, read_users(directory / "u.user")


# --- MovieLens 1M / 10M (``::``-separated .dat) and latest (CSV with headers) --------------

_YEAR = re.compile(r"\((\d{4})\)\s*$")


def _locate(path: Path, text: str) -> int | None:
    """The 1-based number of the first line equal to ``text``."""
    with open(path, encoding="latin-1") as handle:
        for number, line in enumerate(handle, 1):
            if line.rstrip("\r\n") == text:
                return number
    return None


def _read_table(path: Path, names: list[str], separator: str, header: bool, types: dict) -> pa.Table:
    """Read a delimited file with pyarrow (multi-threaded, no Python loop per line).

    ``::`` is read as ``:`` with empty columns in between, which are dropped. Errors name
    the file, the line and the value.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found" + (" (it is a directory)" if path.is_dir() else ""))
    double = separator == "::"
    raw_names = list(names)
    if double:  # "a::b" read with ":" is "a", "", "b": a gap column between every two fields
        raw_names = [part for i, name in enumerate(names) for part in ([f"_gap{i}"] if i else []) + [name]]
    read = pacsv.ReadOptions(column_names=None if header else raw_names, autogenerate_column_names=False,
                             block_size=1 << 24)
    parse = pacsv.ParseOptions(delimiter=":" if double else separator)
    keep = [n for n in raw_names if not n.startswith("_gap")]
    try:
        table = pacsv.read_csv(path, read_options=read, parse_options=parse,
                               convert_options=pacsv.ConvertOptions(include_columns=None if header else keep))
    except pa.ArrowInvalid as error:
        message = str(error)
        found = re.search(r"Expected (\d+) columns, got (\d+): (.*)$", message)
        if found:
            line = _locate(path, found.group(3))
            where = f", line {line}" if line else ""
            expected = len(names) if not header else found.group(1)
            raise DataError(f"{path}{where}: expected {expected} {separator!r}-separated fields: "
                            f"{found.group(3)[:80]!r}") from None
        raise DataError(f"{path}: cannot be read as {separator!r}-separated text ({message})") from None
    if header:
        missing = [name for name in names if name not in table.column_names]
        if missing:
            hint = f" (one column only: is the file separated by something other than {separator!r}?)" \
                if table.num_columns == 1 else ""
            raise DataError(f"{path}: column(s) {missing} missing from the header; found: "
                            f"{table.column_names}{hint}")
        table = table.select(names)
    else:
        table = table.rename_columns(names)
    for name, kind in types.items():
        column = table.column(name)
        try:
            table = table.set_column(table.column_names.index(name), name, column.cast(kind))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            as_text = column.cast(pa.string()).to_pandas()
            parsed = pd.to_numeric(as_text, errors="coerce")
            row = int(np.flatnonzero(parsed.isna().to_numpy() | (parsed % 1 != 0).to_numpy()
                                     if pa.types.is_integer(kind) else parsed.isna().to_numpy())[0])
            raise DataError(f"{path}, line {row + 1 + int(header)}: {name} must be "
                            f"{'an integer' if pa.types.is_integer(kind) else 'a number'}, "
                            f"found {as_text.iloc[row]!r}") from None
    if table.num_rows == 0:
        raise DataError(f"{path}: the file has no rows")
    return table


def _movies_with_year(items: pd.DataFrame) -> pd.DataFrame:
    """MovieLens titles end with the year in parentheses: keep it as a feature column."""
    year = items["title"].str.extract(_YEAR, expand=False)
    return items.assign(year=pd.to_numeric(year, errors="coerce").astype("Int64"),
                        genres=items["genres"].replace("(no genres listed)", ""))


def _read_dat_movies(path: Path, encoding: str) -> pd.DataFrame:
    rows = []
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, encoding=encoding) as handle:
        for number, line in enumerate(handle, 1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            fields = line.split("::")
            if len(fields) != 3:
                raise DataError(f"{path}, line {number}: expected MovieID::Title::Genres, found {line[:80]!r}")
            movie, title, genres = fields
            try:
                rows.append((int(movie), title, genres))
            except ValueError:
                raise DataError(f"{path}, line {number}: MovieID must be an integer, found {movie!r}") from None
    return pd.DataFrame(rows, columns=["item_id", "title", "genres"])


def _ratings_frame(table: pa.Table) -> pd.DataFrame:
    frame = table.to_pandas()
    return frame.rename(columns={"UserID": "user_id", "MovieID": "item_id", "Rating": "rating",
                                 "Timestamp": "timestamp", "userId": "user_id", "movieId": "item_id"})


def load_1m(directory: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame | None]:
    """MovieLens 1M (``ratings.dat``, ``movies.dat``, ``users.dat``) or 10M (no users.dat)."""
    ratings = _ratings_frame(_read_table(directory / "ratings.dat", ["UserID", "MovieID", "Rating", "Timestamp"],
                                         "::", header=False,
                                         types={"UserID": pa.int64(), "MovieID": pa.int64(),
                                                "Rating": pa.float64(), "Timestamp": pa.int64()}))
    try:  # 10M's movies.dat is UTF-8, 1M's is Latin-1
        movies = _read_dat_movies(directory / "movies.dat", "utf-8")
    except UnicodeDecodeError:
        movies = _read_dat_movies(directory / "movies.dat", "latin-1")
    items = _movies_with_year(movies)
    users = None
    if (directory / "users.dat").exists():
        table = _read_table(directory / "users.dat", ["UserID", "Gender", "Age", "Occupation", "Zip"], "::",
                            header=False, types={"UserID": pa.int64(), "Age": pa.int64()})
        users = table.to_pandas().rename(columns={"UserID": "user_id", "Gender": "gender", "Age": "age",
                                                  "Occupation": "occupation", "Zip": "zip_code"})
        users["occupation"] = users["occupation"].astype(str)
    return ratings, items, users


def load_latest(directory: Path) -> tuple[pd.DataFrame, pd.DataFrame, None]:
    """MovieLens latest / latest-small / 25M / 32M: ``ratings.csv`` and ``movies.csv`` with headers."""
    ratings = _ratings_frame(_read_table(directory / "ratings.csv", ["userId", "movieId", "rating", "timestamp"],
                                         ",", header=True,
                                         types={"userId": pa.int64(), "movieId": pa.int64(),
                                                "rating": pa.float64(), "timestamp": pa.int64()}))
    movies = _read_table(directory / "movies.csv", ["movieId", "title", "genres"], ",", header=True,
                         types={"movieId": pa.int64()}).to_pandas()
    items = _movies_with_year(movies.rename(columns={"movieId": "item_id"}))
    return ratings, items, None
