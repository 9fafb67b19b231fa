"""The brain-tumour task's section of a job file: 3D segmentation of the BraTS regions WT, TC and ET."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from confide.tasks.python_config import Device, Precision


class PhantomConfig(BaseModel):
    """Generate BraTS-layout phantoms into ``data.root`` when it does not exist yet (a simulation)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sites: int = Field(default=4, ge=1, le=64)
    cases: int = Field(default=20, ge=2, le=10_000, description="cases per site")
    seed: int = Field(default=0, ge=0, description="the generator's seed (a job's data.phantoms takes the job's)")


class BrainTumorTaskConfig(BaseModel):
    """The 3D brain-tumour segmentation task (BraTS regions WT, TC, ET)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["brain_tumor"] = "brain_tumor"
    model: Literal["segresnet", "unet"] = "segresnet"
    init_filters: int = Field(default=8, ge=2, le=64, description="channels of the first level")
    roi: tuple[int, int, int] = (32, 32, 32)
    lr: float = Field(default=2e-3, gt=0, le=1)
    batch_size: int = Field(default=2, ge=1, le=64)
    augment: bool = True
    device: Device = "auto"
    precision: Precision = "float32"
    phantoms: PhantomConfig | None = None

    @model_validator(mode="after")
    def _roi_fits_the_network(self) -> BrainTumorTaskConfig:
        for size in self.roi:
            if size < 16 or size % 8:
                raise ValueError(f"roi sides must be multiples of 8 and at least 16, got {list(self.roi)}")
        return self
