"""The brain-tumour task's section of a job file: 3D segmentation of the BraTS regions WT, TC and ET."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


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

    @model_validator(mode="after")
    def _roi_fits_the_network(self) -> BrainTumorTaskConfig:
        for size in self.roi:
            if size < 16 or size % 8:
                raise ValueError(f"roi sides must be multiples of 8 and at least 16, got {list(self.roi)}")
        return self
