"""Loading a user's task from its entry point (``task.entry: "module:attribute"``), and checking its fields.

The module is looked for in one folder only (``task.code``: the job file's folder, or a deployed site's own
``--code`` folder) and must lie inside it: the server never sends code, and a job the server sends can choose only
among the modules the site's operator put there. A job without a folder (built in Python, not read from a file)
imports the module from the Python path.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from confide.api import TaskKind
from confide.errors import ConfigError
from confide.tasks.python_config import OWN_FIELDS, PythonTaskConfig


def _module_file(code: Path, module: str) -> Path:
    parts = module.split(".")
    base = code.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"task.entry {module!r}: no {'/'.join(parts)}.py (or package {'/'.join(parts)}/) in {code}; "
        "a job's own task lives beside the job file, or at a deployed site in its --code folder"
    )


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def import_entry(entry: str, code: Path | None) -> Any:
    """The object ``entry`` names, its module imported from ``code`` (or the Python path when ``code`` is None)."""
    module_name, _, attribute = entry.partition(":")
    if code is not None:
        code = Path(code)
        if not code.is_dir():
            raise ConfigError(f"task.code {code} is not a folder (it should hold the module of {entry!r})")
        wanted = _module_file(code, module_name)
        if not _inside(wanted, code):
            raise ConfigError(f"task.entry {entry!r} resolves to {wanted}, outside the task's folder {code}")
        loaded = sys.modules.get(module_name)
        if loaded is not None and Path(getattr(loaded, "__file__", "") or "/").resolve() != wanted.resolve():
            for name in [n for n in sys.modules if n == module_name or n.startswith(module_name + ".")]:
                del sys.modules[name]  # a module of the same name from another folder (another job's task.py)
        if str(code.resolve()) not in sys.path:
            sys.path.insert(0, str(code.resolve()))
        importlib.invalidate_caches()
    try:
        module = importlib.import_module(module_name)
    except ConfigError:
        raise
    except Exception as exc:
        last = traceback.format_exception_only(type(exc), exc)[-1].strip()
        where = f" in {code}" if code is not None else ""
        raise ConfigError(f"task.entry {entry!r}: importing {module_name}{where} failed: {last}") from exc
    if code is not None and not _inside(Path(module.__file__ or "/"), code):
        raise ConfigError(f"task.entry {entry!r}: the module found is {module.__file__}, outside {code}")
    if not hasattr(module, attribute):
        raise ConfigError(f"task.entry {entry!r}: module {module_name} ({module.__file__}) has no {attribute!r}")
    return getattr(module, attribute)


def load_task_kind(config: PythonTaskConfig) -> tuple[TaskKind[Any], BaseModel]:
    """The task kind the job names and its fields, validated by the task's own model."""
    kind = import_entry(config.entry, config.code)
    if not isinstance(kind, TaskKind):
        raise ConfigError(
            f"task.entry {config.entry!r} is a {type(kind).__name__}, expected a confide.api.TaskKind "
            "(see docs/tasks.md)"
        )
    return kind, task_fields(kind, config)


def task_fields(kind: TaskKind[Any], config: PythonTaskConfig) -> BaseModel:
    """The job's task fields checked by the task's ``fields`` model; Confide's own fields (lr, batch_size...) are
    passed on too where the task's model declares them."""
    declared = kind.fields.model_fields
    given = config.own_fields()
    for name in OWN_FIELDS:
        if name in declared and name not in given and name not in ("name", "entry", "code"):
            given[name] = getattr(config, name)
    unknown = sorted(set(given) - set(declared))
    if unknown:  # named even where the task's model would ignore extra fields
        known = sorted({*declared, *OWN_FIELDS} - {"name"})
        raise ConfigError(
            f"task {config.entry!r}: unknown field(s) "
            + ", ".join(f"task.{n}" for n in unknown)
            + f"; its fields: {known}"
        )
    try:
        return kind.fields.model_validate(given)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            where = ".".join(["task", *(str(part) for part in error["loc"])])
            value = error.get("input")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            lines.append(f"{where}: {error['msg']}{shown}")
        raise ConfigError(f"task {config.entry!r} fields are invalid:\n  " + "\n  ".join(lines)) from None
