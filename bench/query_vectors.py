"""Time the history tower's query vectors for every user of a log: users in batches of like
history lengths, each batch reading only the columns its longest history needs (the code),
against every batch reading the whole padded window (the path before session 30). Prints both
times and the largest difference between the two sets of vectors.

    python -m bench.query_vectors                                   # the built-in synthetic log
    python -m bench.query_vectors --dataset-spec ../shared/datasets/ml-1m-dev/spec.toml --threads 2

The model is the default sequence tower after one epoch on a few hundred users (its weights
do not change the time); every user of the log is then served from their training history.
"""

from __future__ import annotations

import argparse
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset-spec", metavar="FILE", help="a dataset spec file (default: the built-in log)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = parser.parse_args()

    import numpy as np
    import torch

    from towerbridge import steps
    from towerbridge.data.options import DataOptions
    from towerbridge.towers import history_tower
    from towerbridge.towers.config import TowerConfig
    from towerbridge.towers.features import default_spec
    from towerbridge.towers.train import train
    from towerbridge.towers.vectors import user_layout

    if args.threads:
        torch.set_num_threads(args.threads)

    def whole_window(trained, windows, user_inputs, items=None):
        needed, vectors = items if items is not None else history_tower.history_items(trained, windows)
        out = trained.model.user_tower(vectors[torch.searchsorted(needed, windows)], windows > 0, user_inputs)
        return user_layout(out[:, -1])

    with tempfile.TemporaryDirectory() as scratch:
        data = DataOptions("custom", spec_file=args.dataset_spec) if args.dataset_spec else DataOptions("synthetic")
        prepared = steps.prepare_data(data, scratch)
        interactions, items = steps.read_part(prepared, "train"), steps.read_part(prepared, "items")
        config = TowerConfig(epochs=1)
        few = interactions[interactions["user_id"].isin(interactions["user_id"].unique()[:300])]
        trained = train(few, items, None, config, default_spec([], list(items.columns), config.use_features),
                        progress=False)
        users = np.unique(interactions["user_id"].to_numpy())
        lengths = interactions.groupby("user_id").size()
        started = time.perf_counter()
        like_lengths = steps.user_queries(trained, users, interactions)
        like_seconds = time.perf_counter() - started
        history_tower.history_queries = whole_window
        started = time.perf_counter()
        whole = steps.user_queries(trained, users, interactions)
        whole_seconds = time.perf_counter() - started
    print(f"{len(users):,} users, {lengths.mean():.0f} training items a user on average (window "
          f"{config.history_length}), {torch.get_num_threads()} threads")
    print(f"whole window:               {whole_seconds:7.1f} s")
    print(f"batches of like lengths:    {like_seconds:7.1f} s")
    print(f"largest difference between the vectors: {np.abs(like_lengths - whole).max():.1e}")


if __name__ == "__main__":
    main()
