"""The pipeline on a MovieLens "latest"-format directory (ratings.csv, movies.csv), written
here from the synthetic generator in exactly that format."""

import csv

from towerbridge.data.options import DataOptions
from towerbridge.data.synthetic import SyntheticSpec, generate
from towerbridge.flows.pipeline import pipeline
from towerbridge.options import PipelineOptions, TrainOptions


def test_latest_format_through_the_whole_pipeline(milvus_uri, prefect_harness, tmp_path):
    interactions, items = generate(SyntheticSpec(n_users=1500, n_items=800, n_topics=24, seed=11))
    directory = tmp_path / "ml-latest-small"
    directory.mkdir()
    with open(directory / "ratings.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["userId", "movieId", "rating", "timestamp"])
        writer.writerows((u, i, 4.0, t) for u, i, t in interactions.itertuples(index=False))
    with open(directory / "movies.csv", "w", newline="") as handle:
        writer = csv.writer(handle)  # quotes titles that hold commas, as GroupLens does
        writer.writerow(["movieId", "title", "genres"])
        writer.writerows((i, title.replace("The ", "Story, The ", 1), genres)
                         for i, title, genres in items.itertuples(index=False))

    data = DataOptions("movielens-latest", str(directory))
    report = pipeline(PipelineOptions(train=TrainOptions(data=data, epochs=5), report_dir=str(tmp_path / "report"),
                                      milvus_uri=milvus_uri))
    assert report.dataset == "movielens-latest" and report.users_evaluated > 1000
    assert report.model["hit_rate@100"] > report.popularity["hit_rate@100"]
