"""One error family with messages meant for people: what is wrong and what to do.

The CLI and the components print `str(error)` and exit non-zero; nothing below the CLI prints a
traceback for a KfoptError.
"""


class KfoptError(Exception):
    """Base of every error kfopt raises on purpose."""


class ConfigError(KfoptError):
    """A configuration file, key, value or parameter is wrong."""


class DataError(KfoptError):
    """Input data is missing, unreadable or does not pass validation."""


class StorageError(KfoptError):
    """A local path or gs:// URI cannot be read or written."""


class ModelError(KfoptError):
    """A model cannot be built, loaded, converted or does not match its data."""


class ArtifactError(KfoptError):
    """An artifact on disk does not match its metadata (kfopt.json, schema.json, checksums)."""
