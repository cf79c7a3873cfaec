"""MovieLens 100K in its own format, read strictly.

    u.data   user id <TAB> item id <TAB> rating <TAB> unix timestamp
    u.item   latin-1, ``|``-separated: id | title | release date | video date | IMDb URL | 19 genre flags
    u.user   ``|``-separated: id | age | gender | occupation | zip code
    u.genre  genre name | flag position (names the 19 flags)

Every problem is reported with the file, the line and the offending value.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

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
