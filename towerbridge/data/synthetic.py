"""A deterministic synthetic interaction log with a latent taste structure and an order.

Items belong to latent topics (one, sometimes two); a topic maps to a visible
genre, several topics per genre. Every user has a taste: a sparse mixture over
topics. Each interaction picks a topic from the user's taste (or, with
probability ``noise``, any item by global popularity) and then an item of that
topic with probability proportional to its popularity. Popularity is Zipf-skewed, so a
popularity baseline is a fair opponent, but it cannot know a user's topics; a two-tower
model can learn them.

The order matters too (``stickiness``, ``sequels``): a user tends to stay on the topic of
their last interaction, and within a stay often takes the next item of the topic's list,
as one watches a series. A query tower that reads the history can learn what comes next;
one that knows only the user's id cannot. ``stickiness=0, sequels=0`` gives a log without
order (each interaction drawn independently).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

GENRES = (
    "Action", "Adventure", "Animation", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)
_ADJECTIVES = (
    "Silent", "Broken", "Golden", "Last", "Hidden", "Crimson", "Endless", "Lost",
    "Electric", "Quiet", "Wild", "Frozen", "Distant", "Burning", "Secret", "Iron",
)
_NOUNS = (
    "Harbor", "Kingdom", "River", "Signal", "Garden", "Empire", "Horizon", "Letter",
    "Mountain", "Circus", "Voyage", "Machine", "Orchard", "Frontier", "Lantern", "Tide",
)
_START = pd.Timestamp("2024-01-01", tz="UTC").value // 10**9
_ROWS_PER_SLICE = 1 << 19
_SPAN_S = 540 * 86400


@dataclass(frozen=True)
class SyntheticSpec:
    """The knobs of the generator; equal specs give byte-identical data."""

    n_users: int = 6000
    n_items: int = 4000
    n_genres: int = 16
    n_topics: int = 48
    mean_interactions: float = 24.0
    noise: float = 0.1
    taste_concentration: float = 0.1
    seed: int = 42
    stickiness: float = 0.7
    sequels: float = 0.3

    @property
    def name(self) -> str:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:8]
        return f"synthetic-u{self.n_users}-i{self.n_items}-s{self.seed}-{digest}"


def _last_start(starts: np.ndarray) -> np.ndarray:
    """For each row, the index of the latest row at or before it where ``starts`` is True
    (the first row must be one)."""
    return np.maximum.accumulate(np.where(starts, np.arange(len(starts)), 0))


def _sequential(rng: np.random.Generator, spec: SyntheticSpec, user_index: np.ndarray, topic: np.ndarray,
                item_index: np.ndarray, noisy: np.ndarray, topic_items: list[np.ndarray],
                topic_cdfs: list[np.ndarray]) -> np.ndarray:
    """Order within each user's log (rows are in time order): a user stays on the topic of
    their previous interaction with probability ``stickiness`` (else draws one from their
    taste, as drawn above), and within a stay takes the next item of the topic's list (a
    sequel) with probability ``sequels`` (else a popular item of the topic, as drawn above)."""
    n = len(user_index)
    first = np.r_[True, user_index[1:] != user_index[:-1]]
    fresh = first | (rng.random(n) >= spec.stickiness)
    topic = topic[_last_start(fresh)]  # a stay keeps the topic of the row that started it
    position = np.empty(n, dtype=np.int64)
    for t in np.unique(topic):
        rows = np.flatnonzero(topic == t)
        members = topic_items[t]
        order = np.argsort(members)
        at = np.searchsorted(members[order], item_index[rows]).clip(max=len(members) - 1)
        found = members[order][at] == item_index[rows]
        # an item drawn outside the topic (noise) starts from a random place in the list
        position[rows] = np.where(found, order[at], rng.integers(0, len(members), len(rows)))
    sequel = ~fresh & (rng.random(n) < spec.sequels) & ~noisy
    base = _last_start(~sequel)
    steps = np.arange(n) - base
    result = item_index.copy()
    for t in np.unique(topic):
        rows = np.flatnonzero((topic == t) & sequel)
        members = topic_items[t]
        result[rows] = members[(position[base[rows]] + steps[rows]) % len(members)]
    rows = np.flatnonzero(~sequel & ~noisy & ~fresh)  # a stay without a sequel: a popular item of the kept topic
    for t in np.unique(topic[rows]):
        mine = rows[topic[rows] == t]
        result[mine] = topic_items[t][np.searchsorted(topic_cdfs[t], rng.random(len(mine)))]
    return result


def generate(spec: SyntheticSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return ``(interactions, items)``.

    interactions: ``user_id``, ``item_id``, ``timestamp`` (unix seconds), one row per
    distinct (user, item), sorted by user then time.
    items: ``item_id``, ``title``, ``genres`` (``|``-separated).
    """
    if not 1 <= spec.n_genres <= len(GENRES):
        raise ValueError(f"n_genres must be between 1 and {len(GENRES)}, got {spec.n_genres}")
    rng = np.random.default_rng(spec.seed)
    n_users, n_items, n_topics = spec.n_users, spec.n_items, spec.n_topics

    # Items: a primary topic, sometimes a second one, and a Zipf popularity.
    primary = rng.integers(0, n_topics, n_items)
    secondary = np.where(rng.random(n_items) < 0.3, rng.integers(0, n_topics, n_items), primary)
    popularity = 1.0 / (rng.permutation(n_items) + 10.0)

    # Per topic, a cumulative distribution over its items for inverse-CDF sampling.
    topic_items, topic_cdfs = [], []
    for topic in range(n_topics):
        members = np.flatnonzero((primary == topic) | (secondary == topic))
        if members.size == 0:  # a topic no item drew: give it the most popular item
            members = np.array([int(np.argmax(popularity))])
        cdf = np.cumsum(popularity[members])
        topic_items.append(members)
        topic_cdfs.append(cdf / cdf[-1])
    global_cdf = np.cumsum(popularity) / popularity.sum()

    # Users: a sparse taste over topics and a heavy-tailed activity level.
    taste = rng.dirichlet(np.full(n_topics, spec.taste_concentration), n_users)
    counts = np.maximum(2, rng.lognormal(np.log(spec.mean_interactions) - 0.5, 1.0, n_users)).astype(np.int64)
    counts = np.minimum(counts, n_items // 2)
    user_index = np.repeat(np.arange(n_users), counts)

    # Topic per interaction from the user's taste (inverse CDF on each row), in slices of
    # rows so the [rows, topics] comparison stays small at 20M interactions.
    taste_cdf = np.cumsum(taste, axis=1)
    del taste
    draws = rng.random(user_index.size)
    topic = np.empty(user_index.size, dtype=np.int64)
    for start in range(0, user_index.size, _ROWS_PER_SLICE):
        rows = slice(start, start + _ROWS_PER_SLICE)
        topic[rows] = (draws[rows, None] > taste_cdf[user_index[rows]]).sum(axis=1)
    np.clip(topic, None, n_topics - 1, out=topic)
    del draws, taste_cdf

    item_index = np.empty(user_index.size, dtype=np.int64)
    uniform = rng.random(user_index.size)
    for t in range(n_topics):
        rows = np.flatnonzero(topic == t)
        item_index[rows] = topic_items[t][np.searchsorted(topic_cdfs[t], uniform[rows])]
    noisy = rng.random(user_index.size) < spec.noise
    item_index[noisy] = np.searchsorted(global_cdf, uniform[noisy]).clip(max=n_items - 1)
    if spec.stickiness or spec.sequels:
        item_index = _sequential(rng, spec, user_index, topic, item_index, noisy, topic_items, topic_cdfs)

    # Time: each user starts somewhere in the span and interacts every few hours to days.
    gaps = rng.exponential(86400.0, user_index.size)
    starts = rng.integers(_START, _START + _SPAN_S, n_users)
    offsets = np.cumsum(gaps)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    offsets -= np.repeat(offsets[first] - gaps[first], counts)
    timestamp = starts[user_index] + offsets.astype(np.int64)

    interactions = pd.DataFrame({
        "user_id": user_index + 1,
        "item_id": item_index + 1,
        "timestamp": timestamp,
    }).drop_duplicates(["user_id", "item_id"], keep="first", ignore_index=True)

    titles = [
        f"The {_ADJECTIVES[a]} {_NOUNS[b]} ({1960 + y})"
        for a, b, y in zip(
            rng.integers(0, len(_ADJECTIVES), n_items),
            rng.integers(0, len(_NOUNS), n_items),
            rng.integers(0, 65, n_items),
        )
    ]
    genre_of = np.arange(n_topics) % spec.n_genres  # several topics share a visible genre
    genres = ["|".join(sorted({GENRES[genre_of[p]], GENRES[genre_of[s]]})) for p, s in zip(primary, secondary)]
    items = pd.DataFrame({"item_id": np.arange(1, n_items + 1), "title": titles, "genres": genres})
    return interactions, items
