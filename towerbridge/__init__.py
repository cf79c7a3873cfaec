"""towerbridge: two-tower retrieval with PyTorch, Milvus and Prefect.

``towerbridge.connect()`` opens the item collection for notebooks (``towerbridge.api``).
"""

from pathlib import Path as _Path

__version__ = "0.1.0"

for _part in ("towers", "milvus", "flows"):
    # towers/, milvus/ and flows/ join the package through links (docs/architecture.md); a
    # checkout made without symbolic links has small text files in their place
    if (_Path(__file__).parent / _part).is_file():
        raise ImportError(f"{_Path(__file__).parent / _part} is a plain file, not the link to ../{_part} that "
                          "towerbridge's checkout needs: this clone was made without symbolic links. Clone with "
                          "`git clone -c core.symlinks=true` (on Windows with Developer Mode on), or install "
                          "the wheel (docs/architecture.md)")
del _part


def __getattr__(name: str):
    # imported on first use: the command line reads the version without pandas or pymilvus
    if name in ("connect", "Client"):
        from towerbridge import api

        return getattr(api, name)
    raise AttributeError(f"module 'towerbridge' has no attribute {name!r}")
