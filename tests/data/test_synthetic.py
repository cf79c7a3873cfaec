import numpy as np
import pandas as pd

from towerbridge.data.synthetic import SyntheticSpec, generate

SMALL = SyntheticSpec(n_users=300, n_items=200, mean_interactions=12, seed=7)


def test_same_seed_same_data():
    first, second = generate(SMALL), generate(SMALL)
    pd.testing.assert_frame_equal(first[0], second[0])
    pd.testing.assert_frame_equal(first[1], second[1])
    assert not generate(SyntheticSpec(**{**SMALL.__dict__, "seed": 8}))[0].equals(first[0])


def test_shape_and_columns():
    interactions, items = generate(SMALL)
    assert list(interactions.columns) == ["user_id", "item_id", "timestamp"]
    assert list(items.columns) == ["item_id", "title", "genres"]
    assert items["item_id"].tolist() == list(range(1, 201))
    assert interactions["item_id"].between(1, 200).all()
    assert not interactions.duplicated(["user_id", "item_id"]).any()
    assert items["genres"].str.len().gt(0).all() and items["title"].str.startswith("The ").all()


def test_popularity_is_skewed():
    interactions, _ = generate(SyntheticSpec(n_users=2000, n_items=1000, seed=1))
    counts = np.sort(interactions["item_id"].value_counts().to_numpy())[::-1]
    top_tenth_share = counts[:100].sum() / counts.sum()
    assert top_tenth_share > 0.3  # a uniform catalog would give 0.1


def test_users_concentrate_on_few_genres():
    interactions, items = generate(SyntheticSpec(n_users=1000, n_items=1000, seed=2))
    genres = items.set_index("item_id")["genres"]

    def median_top_genre_share(log):
        first_genre = genres.loc[log["item_id"]].str.split("|").str[0].to_numpy()
        heavy = log.assign(genre=first_genre).groupby("user_id").filter(lambda rows: len(rows) >= 20)
        return heavy.groupby("user_id")["genre"].agg(lambda g: g.value_counts().iloc[0] / len(g)).median()

    # The same log with items shuffled across users keeps popularity but loses taste.
    shuffled = interactions.assign(item_id=np.random.default_rng(0).permutation(interactions["item_id"].to_numpy()))
    assert median_top_genre_share(interactions) > 1.3 * median_top_genre_share(shuffled)  # measured: 0.235 vs 0.154
