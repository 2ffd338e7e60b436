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


def one_line(text: str) -> str:
    """`text` with every run of whitespace (newlines included) collapsed to one space.

    The CLI promises one line per error; messages that quote a parser's multi-line text pass
    through here.
    """
    return " ".join(str(text).split())


def yaml_problem(error: Exception) -> str:
    """A YAML parser error as one short phrase with its line and column, e.g.
    "expected ',' or ']' at line 2, column 1" (PyYAML's own text spans several lines)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None) or str(error)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return one_line(f"{problem}{where}")
