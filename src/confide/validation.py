"""Validating documents (YAML files, mappings) against pydantic models, with errors that name every bad field.

The job file (:mod:`confide.config`), a site's privacy policy (:mod:`confide.privacy.config`) and the federation
file (:mod:`confide.provision`) all read through here; it imports nothing of Confide but the errors.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from confide.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def describe(error: Any, tags: Mapping[str, Collection[str]] | None = None) -> str:
    """One pydantic error as ``field.path: message (got value)``. ``tags`` names, per field, the tags of a tagged
    union under it (the job's ``task``), left out of the path: the file says task.lr, not task.table.lr."""
    loc = list(error["loc"])
    if tags and len(loc) > 2 and loc[0] in tags and loc[1] in tags[str(loc[0])]:
        del loc[1]
    where = ".".join(str(part) for part in loc) or "(top level)"
    given = error.get("input")
    shown = "" if isinstance(given, dict) else f" (got {given!r})"
    return f"{where}: {error['msg']}{shown}"


def validate_document(
    document: Any,
    model: type[M],
    *,
    source: str,
    what: str,
    tags: Mapping[str, Collection[str]] | None = None,
) -> M:
    """Validate a mapping (for example parsed YAML) against ``model``; errors name every bad field."""
    if not isinstance(document, dict):
        raise ConfigError(f"{source}: expected a mapping of {what} fields, got {type(document).__name__}")
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        lines = "\n  ".join(describe(e, tags) for e in exc.errors())
        raise ConfigError(f"{source} is invalid:\n  {lines}") from None


def read_yaml(path: Path, what: str) -> Any:
    """Parse a YAML file, turning every failure into a ConfigError that names the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} file {path} is not valid YAML: {exc}") from None
