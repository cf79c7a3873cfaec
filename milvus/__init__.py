"""Everything towerbridge does with Milvus: the embedded server and the item collection."""
