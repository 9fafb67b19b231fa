"""Atomic checkpoints of completed rounds: the global model and the run's state, to resume from round N."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from confide import serde
from confide.errors import ConfideError
from confide.records import Arrays
from confide.strategies.base import StrategyState


@dataclass(frozen=True)
class Checkpoint:
    round: int
    arrays: Arrays
    state: dict[str, Any]
    strategy: StrategyState = field(default_factory=StrategyState)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a crash right after it must not lose the new name)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # a platform without directory handles: the rename stands as the OS keeps it
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save(
    directory: Path, round: int, arrays: Arrays, state: dict[str, Any], strategy: StrategyState | None = None
) -> Path:
    """Write round ``round``: the model and the strategy's arrays first, then the record that points at them
    (the commit: until it is replaced, the previous round's files are the checkpoint)."""
    directory.mkdir(parents=True, exist_ok=True)
    strategy = strategy or StrategyState()
    model = directory / f"global-round{round:05d}.safetensors"
    serde.save_arrays(model, arrays)
    record: dict[str, Any] = {"round": round, "model": model.name, "state": state}
    record["strategy"] = {"scalars": dict(strategy.scalars)}
    if len(strategy.arrays):
        kept = directory / f"strategy-round{round:05d}.safetensors"
        serde.save_arrays(kept, strategy.arrays)
        record["strategy"]["arrays"] = kept.name
    pointer = directory / "latest.json"
    if pointer.exists():  # the previous generation stays, pointed at by previous.json, until the next round
        _atomic_write(directory / "previous.json", pointer.read_bytes())
    _atomic_write(pointer, json.dumps(record, indent=1).encode())
    current = {model.name, record["strategy"].get("arrays"), *_files(directory / "previous.json")}
    for old in [*directory.glob("global-round*.safetensors"), *directory.glob("strategy-round*.safetensors")]:
        if old.name not in current:
            old.unlink(missing_ok=True)
    return model


def _files(pointer: Path) -> set[str]:
    """The files a checkpoint record points at (none when it is missing or unreadable)."""
    try:
        record = json.loads(pointer.read_text())
        return {str(record["model"]), *([str(record["strategy"]["arrays"])] if "arrays" in record["strategy"] else [])}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def load_latest(directory: Path) -> Checkpoint | None:
    """The last completed round, or ``None`` when there is no checkpoint yet."""
    pointer = directory / "latest.json"
    if not pointer.exists():
        return None
    try:
        record = json.loads(pointer.read_text())
        arrays = serde.decode_arrays((directory / record["model"]).read_bytes())
        kept = record.get("strategy", {})
        strategy = StrategyState(
            scalars=dict(kept.get("scalars", {})),
            arrays=serde.decode_arrays((directory / kept["arrays"]).read_bytes()) if "arrays" in kept else Arrays(()),
        )
        found = Checkpoint(round=int(record["round"]), arrays=arrays, state=dict(record["state"]), strategy=strategy)
    except (OSError, ValueError, KeyError, TypeError, ConfideError) as exc:
        raise ConfideError(f"checkpoint in {directory} cannot be read: {exc}") from exc
    for what, held in (("model", found.arrays), ("strategy state", found.strategy.arrays)):
        bad = non_finite(held)
        if bad:
            raise ConfideError(
                f"checkpoint in {directory} (round {found.round}) is refused: its {what} holds NaN or infinite values "
                f"in {bad[:3]}; the round before is kept in previous.json (rename it to latest.json to resume from "
                "it), or start the job afresh"
            )
    return found


def non_finite(arrays: Arrays) -> list[str]:
    """The names of the floating-point arrays that hold NaN or infinite values."""
    return [name for name, v in arrays.items() if np.issubdtype(v.dtype, np.floating) and not np.isfinite(v).all()]
