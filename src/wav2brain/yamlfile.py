"""Reading a YAML file a user named on the command line (a study, a recipe, a sweep)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def read_yaml(path: str | Path, what: str) -> Any:
    """The content of the YAML file at ``path``; ``what`` names it in errors (``"recipe"``).

    Raises
    ------
    FileNotFoundError
        Nothing at ``path``.
    ValueError
        ``path`` is a folder or a device (``/dev/null``), or not UTF-8 YAML (one line, with the
        parser's line and column).
    """
    import yaml

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} does not exist")
    if not path.is_file():
        raise ValueError(f"{what} {path} is not a regular file: expected a YAML file")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as error:
        raise ValueError(f"{what} {path} is not valid YAML: not UTF-8 text ({error})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = "" if mark is None else f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(f"{what} {path} is not valid YAML{where}: {problem}") from None
