"""What a towerbridge version looks like in Milvus: its names, field limits and filters.

Constants and pure functions (no connection): ``store`` builds collections from them, and
the analysts' queries use the same field names and filter literals.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

import numpy as np

from towerbridge.errors import ConfigError

DEFAULT_ALIAS = "towerbridge_items"
PROPERTY_PREFIX = "towerbridge."
VECTOR_FIELD = "embedding"
MAX_LIMIT = 16384  # Milvus' cap on topk and on nq per search request
TEXT_MAX = 1024
ID_MAX = 512
GENRES_MAX = 64  # genres per item
GENRE_MAX = 128  # characters per genre
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")


def _room(longest: int, cap: int, least: int) -> int:
    """A schema limit for text whose longest value is ``longest``: the next power of two."""
    return min(cap, max(least, 1 << max(0, longest - 1).bit_length()))


def clip_text(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes (Milvus' unit for VARCHAR lengths), on a character boundary."""
    data = text.encode()
    return text if len(data) <= limit else data[:limit].decode(errors="ignore")


@dataclass(frozen=True)
class TextLimits:
    """The maximum lengths (UTF-8 bytes) a version's schema declares for its text fields.

    A version is written once, so its limits are taken from its own data (``of``): the next
    power of two above the longest value, up to the caps. It does not change how Milvus cuts
    a version into segments (the segment size setting does)."""
    title: int = TEXT_MAX
    genres: int = TEXT_MAX
    genre_count: int = GENRES_MAX
    genre: int = GENRE_MAX
    item_id: int = ID_MAX

    @classmethod
    def of(cls, titles: list[str], genres: list[str], item_ids=None) -> TextLimits:
        def longest(texts) -> int:
            return max((len(t.encode()) for t in texts), default=0)

        lists = [[g for g in text.split("|") if g] for text in genres]
        return cls(title=_room(longest(titles), TEXT_MAX, 16), genres=_room(longest(genres), TEXT_MAX, 16),
                   genre_count=_room(max(map(len, lists), default=0), GENRES_MAX, 1),
                   genre=_room(max((longest(g) for g in lists), default=0), GENRE_MAX, 16),
                   item_id=_room(longest(map(str, item_ids)) if item_ids is not None else ID_MAX, ID_MAX, 16))

    @classmethod
    def declared(cls, params: dict[str, dict]) -> TextLimits:
        """The limits a collection's schema declares, from its fields' params
        (``{field: {"max_length": ...}}``); fields it lacks keep the caps."""
        def limit(field: str, key: str, default: int) -> int:
            return int(params.get(field, {}).get(key, default))

        return cls(title=limit("title", "max_length", TEXT_MAX), genres=limit("genres", "max_length", TEXT_MAX),
                   genre_count=limit("genre_list", "max_capacity", GENRES_MAX),
                   genre=limit("genre_list", "max_length", GENRE_MAX), item_id=limit("item_id", "max_length", ID_MAX))


def check_name(name: str, what: str = "alias") -> str:
    """``name`` if Milvus accepts it as a collection or alias name, else a ConfigError. Names
    also become file names (the rebuild's lock), so nothing else may pass."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{what} {name!r}: Milvus names are letters, digits and underscores, not starting "
                          "with a digit, at most 255 characters")
    return name


def version_name(alias: str, model_id: str) -> str:
    """``<alias>_v<UTC build time>_<model id's last 6 characters>``."""
    stamp = time.strftime("%Y%m%d_%H%M%S", time.gmtime())
    name = f"{alias}_v{stamp}_{re.sub(r'[^A-Za-z0-9_]', '_', model_id[-6:])}"
    if not _NAME.match(name):
        raise ConfigError(f"cannot form a valid collection name from alias {alias!r} and model {model_id!r}")
    return name


def literal(value) -> str:
    """A value as a Milvus expression literal: an int, or a double-quoted string with quotes
    and backslashes escaped (Milvus 2.3 reads the JSON escapes; other text stays as is)."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"an id must be an integer or a string, got {value!r}")
    return str(int(value))


def id_filter(ids: list, id_type: str) -> str:
    """A filter expression matching these ids, with every value typed and quoted safely."""
    if id_type == "string":
        return f"item_id in [{', '.join(literal(str(value)) for value in ids)}]"
    return f"item_id in [{', '.join(literal(int(value)) for value in ids)}]"
