"""A model file that describes itself: the arrays, and a card saying what the model is and how to use it.

The file is a Confide safetensors file (:func:`confide.serde_container.decode_arrays` reads its arrays, like any
model file) whose header metadata holds, beside the array order, the key ``confide_model``: the
:class:`ModelCard` as JSON. Everything needed to use the model travels inside the one file, so copying it keeps
its description: the task's name and fields (its network configuration, completed as the job ran it), the class
names or a table's encoded feature order, the job, the model's name in the job, the metric, the seed, Confide's
version and the time it was written. The file is written atomically (a temporary file, synced, then renamed).

Reading never unpickles and never imports anything the card names: the card is validated data, and a task named
by entry point is loaded only from a folder its user gives (``confide predict --code``).
"""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from confide.errors import ConfigError, PayloadError
from confide.records import Arrays
from confide.serde_container import (
    DEFAULT_MAX_BYTES,
    MAX_HEADER_BYTES,
    decode_arrays,
    safetensors_parts,
    split_header,
)

FORMAT: Literal["confide-model/1"] = "confide-model/1"
CARD_KEY = "confide_model"


class ModelCard(BaseModel):
    """What a model file says about its model (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["confide-model/1"] = FORMAT
    job: str = Field(description="the job's name")
    model: str = Field(description="the model's name in the job: fedavg, local:<site>, pooled, finetuned:<site>, ...")
    site: str | None = Field(default=None, description="the site whose version this is (its own norm layers)")
    kind: str = Field(description="the task's name (task.name): brain_tumor, table, image_classification, python...")
    task: dict[str, Any] = Field(description="the job's task section, its fields as the job ran them")
    metric: str = Field(description="the headline metric, higher is better")
    metrics: tuple[str, ...] = ()
    inputs: str = ""
    outputs: str = ""
    classes: tuple[str, ...] | None = Field(default=None, description="each output class's name, in output order")
    features: tuple[str, ...] | None = Field(default=None, description="the model's input columns, in order")
    example_shape: tuple[int, ...] | None = Field(default=None, description="one input example's shape, no batch")
    seed: int = 0
    strategy: str = ""
    rounds: int = 0
    confide_version: str = ""
    created: str = Field(default="", description="when the file was written (UTC, ISO 8601)")


def confide_version() -> str:
    """The installed Confide's version ("unknown" when it is not installed as a package)."""
    try:
        return metadata.version("confide")
    except metadata.PackageNotFoundError:
        return "unknown"


def save_model(path: Path, arrays: Arrays, card: ModelCard) -> Path:
    """Write ``arrays`` with ``card`` in the header, atomically; return ``path``."""
    order = json.dumps([[name, list(value.shape)] for name, value in arrays.items()])
    encoded = safetensors_parts(arrays, {"confide_order": order, CARD_KEY: card.model_dump_json()})
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        for part in encoded.parts:
            handle.write(part)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def _header(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            length = int.from_bytes(prefix, "little") if len(prefix) == 8 else 0
            data = prefix + handle.read(min(length, MAX_HEADER_BYTES))
    except OSError as exc:
        raise ConfigError(f"model file {path} cannot be read: {exc}") from None
    try:
        document, _ = split_header(data)
    except PayloadError as exc:
        raise ConfigError(f"{path} is not a Confide model file (a safetensors file): {exc}") from None
    return document


def read_card(path: Path) -> ModelCard | None:
    """The card of the model file at ``path`` (reading its header only), or None for a model file written
    without one (an older file, a checkpoint). A file that is no model file, or a card that does not validate,
    is a :class:`ConfigError` naming the file."""
    meta = _header(path).get("__metadata__")
    if not isinstance(meta, dict) or "confide_order" not in meta:
        raise ConfigError(f"{path} is a safetensors file but not a Confide model file (no recorded array order)")
    text = meta.get(CARD_KEY)
    if text is None:
        return None
    try:
        return ModelCard.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:3])
        raise ConfigError(f"model file {path}: its description ({CARD_KEY}) is not valid: {problems}") from None


def read_model(path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[Arrays, ModelCard | None]:
    """The arrays and the card (None when the file has none) of the model file at ``path``."""
    card = read_card(path)
    size = path.stat().st_size
    if size > max_bytes:
        raise ConfigError(f"model file {path} holds {size} bytes, more than the limit of {max_bytes}")
    try:
        arrays = decode_arrays(path.read_bytes(), max_bytes=max_bytes)
    except PayloadError as exc:
        raise ConfigError(f"model file {path} cannot be read: {exc}") from None
    return arrays, card
