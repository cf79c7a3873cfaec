"""towerbridge: two-tower retrieval with PyTorch, Milvus and Prefect.

``towerbridge.connect()`` opens the item collection for notebooks (``towerbridge.api``).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # imported on first use: the command line reads the version without pandas or pymilvus
    if name in ("connect", "Client"):
        from towerbridge import api

        return getattr(api, name)
    raise AttributeError(f"module 'towerbridge' has no attribute {name!r}")
