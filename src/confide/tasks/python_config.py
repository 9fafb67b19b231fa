"""A user's own task in a job file: ``task: {name: python, entry: "module:attribute", ...}``.

Confide's own fields are checked here; every other field belongs to the task and is checked by the task's own
``fields`` model when the task is loaded (:mod:`confide.workloads.entry`), so a wrong one is still named.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

ENTRY = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _device(value: str) -> str:
    if not DEVICE.match(value):
        raise ValueError("expected auto, cpu, cuda or cuda:N")
    return value


Device = Annotated[str, AfterValidator(_device), Field(description="auto (CUDA when present), cpu, cuda or cuda:N")]
"""``task.device`` of every torch task: where it trains and evaluates."""

Precision = Annotated[
    Literal["float32", "bfloat16", "float16"],
    Field(
        description="the precision of training steps: float32; bfloat16 (mixed precision, CPU or CUDA); float16 "
        "(mixed precision with a loss scaler, CUDA only). Evaluation runs in float32; DP-SGD trains in float32"
    ),
]
"""``task.precision`` of every torch task: mixed precision for training, off by default."""

OWN_FIELDS = ("name", "entry", "code", "lr", "batch_size", "optimizer", "device", "precision")


class PythonTaskConfig(BaseModel):
    """A task written outside Confide on its public task API (:mod:`confide.api`)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: Literal["python"] = "python"
    entry: str = Field(description='the task as "module:attribute", for example "task:task" for task.py')
    code: Path | None = Field(
        default=None,
        description="the folder holding the entry's module (default: the job file's folder); a deployed site "
        "always uses its own --code folder instead",
    )
    lr: float = Field(default=1e-3, gt=0, le=10, allow_inf_nan=False, description="local learning rate")
    batch_size: int = Field(default=32, ge=1, le=100_000)
    optimizer: Literal["adam", "sgd"] = "adam"
    device: Device = "auto"
    precision: Precision = "float32"

    @field_validator("entry")
    @classmethod
    def _entry(cls, value: str) -> str:
        if not ENTRY.match(value):
            raise ValueError(f'expected "module:attribute" (for example "task:task"), got {value!r}')
        return value

    def own_fields(self) -> dict[str, Any]:
        """The fields that belong to the task (everything but Confide's own), as written in the job."""
        return dict(self.model_extra or {})
