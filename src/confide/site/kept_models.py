"""Where a site keeps each deployed job's models: one folder per job, one folder per run, never overwritten.

::

    MODELS/                          KIT/models, or the site command's --models
      <job>/                         the job's name as a safe folder name (see job_folder)
        latest.json                  {"run": "<run>", ...}: the newest run of this job (written last)
        <run>/                       the UTC time the job ended, 20250314T101500Z (-2, -3... when taken)
          global.safetensors         the final model, as this site uses it
          finetuned.safetensors      fine-tuned on the site's own training split (when the job asks)
          own-test.json              both models' scores on the site's own test split
          manifest.json              the job, the server, the time, the rounds, the files

A second job, or a second run of the same job, gets a folder of its own: nothing of an earlier one is replaced or
mixed with it. The job's name comes from the server, so it is made a safe folder name first (no separator, no
``..``, no control character, bounded); every folder is checked to lie inside the models folder before anything is
written. The ``latest`` pointer is a small JSON file, not a symbolic link (portable, and written atomically).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confide.errors import ConfideError

JOB_FOLDER_LIMIT = 64
"""The longest folder name a job gets (a longer or altered name is cut and ends with a hash of the original)."""
LATEST = "latest.json"
MANIFEST = "manifest.json"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))}


def job_folder(name: str) -> str:
    """A job's name as one safe path component: letters, digits, ``_``, ``.`` and ``-`` only, never starting with
    a dot (no ``.``, ``..`` or hidden folder), never a name Windows reserves, at most :data:`JOB_FOLDER_LIMIT`
    characters. A name that had to change ends with ``-`` and 8 hex digits of its SHA-256, so that two different
    names never share a folder; a name already safe is kept as it is."""
    text = str(name)
    safe = _SAFE.sub("_", text).rstrip(". ")
    if safe.startswith("."):
        safe = "_" + safe.lstrip(".")
    if safe.split(".")[0].upper() in _RESERVED:
        safe = "_" + safe
    if safe == text and 0 < len(safe) <= JOB_FOLDER_LIMIT:
        return safe
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    stem = safe[: JOB_FOLDER_LIMIT - 9].rstrip(". ") or "job"
    return f"{stem}-{digest}"


def _inside(root: Path, path: Path) -> Path:
    """``path`` resolved, after checking it lies inside ``root`` (else a ConfideError naming both)."""
    resolved, base = path.resolve(), root.resolve()
    if resolved == base or base not in resolved.parents:
        raise ConfideError(f"models folder {path} would lie outside {root}; nothing was written")
    return resolved


def new_run_folder(root: Path, job_name: str, when: datetime) -> Path:
    """A fresh folder for this run of ``job_name``: ``ROOT/<job>/<UTC time>``, created now (an existing one is
    never reused: the next free ``-2``, ``-3``... is taken)."""
    job_dir = _inside(root, root / job_folder(job_name))
    job_dir.mkdir(parents=True, exist_ok=True)
    stamp = when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    for attempt in range(1, 1000):
        run = job_dir / (stamp if attempt == 1 else f"{stamp}-{attempt}")
        try:
            run.mkdir()
        except FileExistsError:
            continue
        return _inside(root, run)
    raise ConfideError(f"no free run folder for job {job_name!r} in {job_dir} at {stamp}")


def write_json(path: Path, document: dict[str, Any]) -> Path:
    """Write JSON atomically: a temporary file, synced, then renamed over ``path``."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(json.dumps(document, indent=1, ensure_ascii=True))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def point_latest(run: Path, manifest: dict[str, Any]) -> Path:
    """Make ``run`` the latest of its job (``<job>/latest.json``), the last file written for the run."""
    pointer = {"run": run.name, "manifest": f"{run.name}/{MANIFEST}", "finished_at": manifest.get("finished_at")}
    return write_json(run.parent / LATEST, pointer)


def latest_run(root: Path, job_name: str) -> Path | None:
    """The folder of the newest kept run of ``job_name`` (``None`` when it has none, or its pointer is unreadable
    or points outside the job's folder)."""
    job_dir = root / job_folder(job_name)
    try:
        run = json.loads((job_dir / LATEST).read_text(encoding="utf-8"))["run"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(run, str) or job_folder(run) != run:  # a run is a plain folder name, never a path
        return None
    folder = job_dir / run
    return folder if folder.is_dir() else None
