"""The project's exceptions: each message says what is wrong, where, and what to do.

The CLI prints a `TowerbridgeError` as one line without a traceback and exits
non-zero; any other exception is a bug and keeps its traceback.
"""


class TowerbridgeError(Exception):
    """Base class of every error a user can act on."""


class DataError(TowerbridgeError):
    """Input data is missing, malformed or inconsistent."""


class ConfigError(TowerbridgeError):
    """A parameter, option or environment variable has a value we cannot use."""


class MilvusUnavailable(TowerbridgeError):
    """The Milvus server cannot be reached or started."""


class CollectionError(TowerbridgeError):
    """A collection or index is missing, or does not hold what it should."""


class ArtifactError(TowerbridgeError):
    """A model artifact directory is missing, incomplete or corrupt."""


class LockTimeout(TowerbridgeError):
    """Another process held a lock (e.g. a rebuild of the same alias) for too long."""


class RebuildRejected(TowerbridgeError):
    """A rebuilt candidate failed validation; the serving version was left as it was."""


class TrainingError(TowerbridgeError):
    """Training could not finish: e.g. one of its processes died (the others were stopped)."""


class EmbeddingError(TowerbridgeError):
    """The item embedding on Dask failed (a shard's task, or a worker died); Milvus was not written."""
