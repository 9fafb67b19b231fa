"""Atomic checkpoints of completed rounds: the global model and the run's state, to resume from round N."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confide import serde
from confide.errors import ConfideError
from confide.records import Arrays


@dataclass(frozen=True)
class Checkpoint:
    round: int
    arrays: Arrays
    state: dict[str, Any]


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save(directory: Path, round: int, arrays: Arrays, state: dict[str, Any]) -> Path:
    """Write round ``round``: the model first, then the state that points at it (the commit)."""
    directory.mkdir(parents=True, exist_ok=True)
    model = directory / f"global-round{round:05d}.safetensors"
    serde.save_arrays(model, arrays)
    record = {"round": round, "model": model.name, "state": state}
    _atomic_write(directory / "latest.json", json.dumps(record, indent=1).encode())
    for old in directory.glob("global-round*.safetensors"):
        if old != model:
            old.unlink(missing_ok=True)
    return model


def load_latest(directory: Path) -> Checkpoint | None:
    """The last completed round, or ``None`` when there is no checkpoint yet."""
    pointer = directory / "latest.json"
    if not pointer.exists():
        return None
    try:
        record = json.loads(pointer.read_text())
        arrays = serde.decode_arrays((directory / record["model"]).read_bytes())
        return Checkpoint(round=int(record["round"]), arrays=arrays, state=dict(record["state"]))
    except (OSError, ValueError, KeyError, TypeError, ConfideError) as exc:
        raise ConfideError(f"checkpoint in {directory} cannot be read: {exc}") from exc
