"""Reading a YAML file a user named on the command line (a study, a recipe, a sweep)."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

LEADING_ZERO = re.compile(r"^[-+]?0[0-9]+$")
"""Plain scalars such as ``001`` or ``010``, which :func:`read_yaml` keeps as strings."""


@cache
def _loader():
    """PyYAML's safe loader, except that integers written with a leading zero stay strings.

    YAML 1.1 (PyYAML) reads ``010`` as 8 (octal) and ``001`` as 1, so ``subjects: [001, 010]``
    would silently become subjects 1 and 8. Such scalars are labels (BIDS subjects, runs), and
    YAML 1.2 has no octal without ``0o`` either: they are read as written.
    """
    import yaml

    class Loader(yaml.SafeLoader):
        yaml_implicit_resolvers = {
            key: list(value) for key, value in yaml.SafeLoader.yaml_implicit_resolvers.items()
        }

    for first in "-+0":
        Loader.yaml_implicit_resolvers.setdefault(first, []).insert(
            0, ("tag:yaml.org,2002:str", LEADING_ZERO)
        )
    return Loader


def read_yaml(path: str | Path, what: str) -> Any:
    """The content of the YAML file at ``path``; ``what`` names it in errors (``"recipe"``).

    Integers with a leading zero (``001``) are read as strings (see :func:`_loader`).

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
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_loader())
    except UnicodeDecodeError as error:
        raise ValueError(f"{what} {path} is not valid YAML: not UTF-8 text ({error})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = "" if mark is None else f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(f"{what} {path} is not valid YAML{where}: {problem}") from None
