"""Your own tables with string ids, described by a spec, through the whole pipeline:
the Milvus collection gets a VARCHAR primary key and answers with the same string ids."""

from pymilvus import DataType, MilvusClient

from towerbridge.data.options import DataOptions
from towerbridge.data.synthetic import SyntheticSpec, generate
from towerbridge.flows.pipeline import pipeline
from towerbridge.options import PipelineOptions, TrainOptions

SPEC = """
[interactions]
path = "events.csv"
user = "customer"
item = "sku"
timestamp = "when"

[items]
path = "catalog.parquet"
id = "sku"
title = "name"
genres = "categories"
features = { shelf = "categorical" }

[filters]
deduplicate = "keep-last"
"""


def test_string_ids_from_a_spec_through_milvus(milvus_uri, prefect_harness, tmp_path):
    interactions, items = generate(SyntheticSpec(n_users=1200, n_items=600, n_topics=20, seed=5))
    events = interactions.assign(customer="cust-" + interactions["user_id"].astype(str),
                                 sku="SKU-" + interactions["item_id"].astype(str),
                                 when=interactions["timestamp"])
    events[["customer", "sku", "when"]].to_csv(tmp_path / "events.csv", index=False)
    catalog = items.assign(sku="SKU-" + items["item_id"].astype(str), shelf=(items["item_id"] % 7).astype(str))
    catalog.rename(columns={"title": "name", "genres": "categories"})[
        ["sku", "name", "categories", "shelf"]].to_parquet(tmp_path / "catalog.parquet")
    (tmp_path / "shop.toml").write_text(SPEC)

    data = DataOptions("custom", spec_file=str(tmp_path / "shop.toml"))
    report = pipeline(PipelineOptions(train=TrainOptions(data=data, epochs=5), report_dir=str(tmp_path / "r"),
                                      milvus_uri=milvus_uri))
    assert report.model["hit_rate@100"] > report.popularity["hit_rate@100"]
    assert report.dataset == "shop"  # the spec file's stem, not "custom"

    client = MilvusClient(milvus_uri)
    fields = {f["name"]: f for f in client.describe_collection(report.collection)["fields"]}
    assert fields["item_id"]["type"] == DataType.VARCHAR and fields["item_id"].get("is_primary")
    rows = client.query(report.collection, filter='item_id in ["SKU-1", "SKU-2"]',
                        output_fields=["item_id", "title"])
    assert sorted(row["item_id"] for row in rows) == ["SKU-1", "SKU-2"]
    assert client.get_collection_stats(report.collection)["row_count"] == 600
