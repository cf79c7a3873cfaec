"""Which dataset to read and how to filter and split it: one object for the CLI, the flows and the steps."""

from __future__ import annotations

import os
from dataclasses import field

from pydantic import ConfigDict, field_validator
from pydantic.dataclasses import dataclass

from towerbridge import defaults


# A pydantic dataclass: built positionally like any dataclass, and validated (unknown keys
# refused) where it arrives as JSON, in a deployment's parameters.
@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class DataOptions:
    """dataset: ``synthetic``, a MovieLens name, or ``custom`` (with ``spec_file``);
    data_dir: where its files are (default: the built-in or downloaded copy);
    protocol: the evaluation split (``leave-last-out``, ``tfrs``, ``time-cutoff``);
    filters: implicit-feedback options (``data/filters.py``), on top of a spec file's;
    split_options: ``holdout``, ``test_fraction``, ``cutoff``, ``seed`` (``data/split.py``);
    drop_unknown_items: drop interactions with items missing from the catalog instead of failing."""

    dataset: str = defaults.DATASET
    data_dir: str | None = None
    spec_file: str | None = None
    protocol: str = defaults.PROTOCOL
    filters: dict = field(default_factory=dict)
    split_options: dict = field(default_factory=dict)
    drop_unknown_items: bool = False

    @field_validator("data_dir", "spec_file", mode="before")
    @classmethod
    def _path_as_text(cls, value):
        return os.fspath(value) if isinstance(value, os.PathLike) else value
