"""The analysts' questions from Python, answered as pandas DataFrames (what the commands print).

    import towerbridge

    with towerbridge.connect() as tb:           # MILVUS_URI, else the embedded server
        tb.recommend(user=196, k=10)             # rank, item_id, score, title, genres
        tb.similar(item=50)                      # rank, item_id, cosine, title, genres
        tb.query('array_contains(genre_list, "Comedy")', limit=20)
        tb.versions()                            # every version of the alias
        tb.interactions()                        # the log the serving model knows

``connect`` finds Milvus the way the commands do: ``uri`` if given, else ``MILVUS_URI``
(with MILVUS_TOKEN or MILVUS_USER/MILVUS_PASSWORD), else the embedded server of
TOWERBRIDGE_HOME, started if it is not running and stopped by ``close`` only if
``connect`` started it (``towerbridge milvus start`` keeps one running across sessions).
Every question goes to ``alias`` unless it names a ``collection`` (a version).
"""

from __future__ import annotations

import contextlib

import pandas as pd

from towerbridge import analyst
from towerbridge.milvus import server
from towerbridge.milvus.schema import DEFAULT_ALIAS
from towerbridge.milvus.store import ItemStore

RECOMMEND_COLUMNS = ["rank", "item_id", "score", "title", "genres"]
SIMILAR_COLUMNS = ["rank", "item_id", "cosine", "title", "genres"]
# What each answer's number is, as the commands and DataFrame.attrs["score"] say it.
RECOMMEND_SCORE = ("score: the model's score, the inner product of the user's query vector and the item's "
                   "vector (trained similarity / temperature, plus the popularity prior when the model uses "
                   "one) as the IVF_PQ index estimates it; higher ranks first")
SIMILAR_SCORE = ("cosine: cosine similarity of the two items' trained embeddings (popularity left out), "
                 "computed exactly, in [-1, 1]")


def ranked(rows: list[dict], columns: list[str], score: str) -> pd.DataFrame:
    """Result rows as a frame with a 1-based ``rank``; ``attrs["score"]`` says what the score is."""
    frame = pd.DataFrame([{"rank": rank, **row} for rank, row in enumerate(rows, 1)], columns=columns)
    frame.attrs["score"] = score
    return frame


class Client:
    """A connection to the item collection for notebooks and scripts (see the module)."""

    def __init__(self, uri: str | None = None, alias: str = DEFAULT_ALIAS, log=server.notice):
        self.alias = alias
        self._open = contextlib.ExitStack()
        try:
            self.uri = self._open.enter_context(server.endpoint(uri, log=log))
            self.store = self._open.enter_context(ItemStore(self.uri))
        except BaseException:
            self._open.close()
            raise

    def recommend(self, user=None, k: int = 10, filter: str = "", include_seen: bool = False,
                  history: list | None = None, interactions: pd.DataFrame | None = None,
                  collection: str | None = None) -> pd.DataFrame:
        """Top ``k`` items for ``user`` by the model that built the version, or for someone who
        just had the items ``history`` (oldest first; history towers only). ``filter``: a Milvus
        expression on the items; ``interactions`` (user_id, item_id, timestamp): newer data for
        the user's latest items. Items already had are left out unless ``include_seen``."""
        rows = analyst.recommend(self.store, collection or self.alias, None if user is None else str(user), k,
                                 filter, include_seen, history, interactions)
        return ranked(rows, RECOMMEND_COLUMNS, RECOMMEND_SCORE)

    def similar(self, item, k: int = 10, filter: str = "", collection: str | None = None) -> pd.DataFrame:
        """The ``k`` items nearest ``item`` by the cosine of their trained embeddings."""
        rows = analyst.similar(self.store, collection or self.alias, str(item), k, filter)
        return ranked(rows, SIMILAR_COLUMNS, SIMILAR_SCORE)

    def query(self, filter: str, fields: list[str] | None = None, limit: int | None = 100,
              collection: str | None = None) -> pd.DataFrame:
        """Rows matching ``filter`` (e.g. ``'array_contains(genre_list, "Drama")'``), the
        ``fields`` of each (default item_id, title, genres), at most ``limit`` (None: all)."""
        fields = fields or ["item_id", *analyst.RESULT_FIELDS]
        rows = analyst.query(self.store, collection or self.alias, filter, fields, limit)
        return pd.DataFrame(rows, columns=fields)

    def versions(self) -> pd.DataFrame:
        """Every version of the alias, newest first: which serves, rows, index, tuned nprobe,
        model, hit rate at 10, and whether any of its files are missing (``damaged``)."""
        rows = analyst.versions(self.store, self.alias)
        return pd.DataFrame(rows, columns=analyst.VERSION_COLUMNS)

    def interactions(self, collection: str | None = None) -> pd.DataFrame:
        """The interactions the version's model knows (user_id, item_id, timestamp: its
        training and held-out data): users to ask about, how popular each item is."""
        return analyst.interactions(self.store, collection or self.alias)

    def close(self) -> None:
        """Close the connection; stop the embedded server if this client started it."""
        self._open.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(uri: str | None = None, alias: str = DEFAULT_ALIAS) -> Client:
    """A ``Client`` for ``alias`` (see the module for how Milvus is found)."""
    return Client(uri, alias)
