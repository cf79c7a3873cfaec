"""towerbridge: two-tower retrieval with PyTorch, Milvus and Prefect."""

__version__ = "0.1.0"
