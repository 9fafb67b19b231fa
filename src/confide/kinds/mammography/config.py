"""The mammography task's section of a job file, and the classes each target predicts."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Target = Literal["density", "birads", "abnormal"]

# Class names in index order. Density and BI-RADS are ordinal (the kappa's weights follow this order).
CLASSES: dict[str, tuple[str, ...]] = {
    "density": ("F", "G", "D"),  # MIAS background tissue: fatty, fatty-glandular, dense-glandular
    "birads": ("A", "B", "C", "D"),  # BI-RADS breast composition a-d
    "abnormal": ("normal", "abnormal"),
}


class MammoTaskConfig(BaseModel):
    """2D mammogram classification: breast density (MIAS F/G/D or BI-RADS A-D) or abnormal vs normal."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["mammo_density"] = "mammo_density"
    target: Target = Field(
        default="density",
        description="density: F/G/D labels (3 classes); birads: A/B/C/D (4); abnormal: normal vs abnormal (2)",
    )
    image_size: int = Field(default=64, ge=16, le=1024, description="images are padded square and resized to this side")
    width: int = Field(default=16, ge=2, le=256, description="channels of the first conv block, doubled per block")
    blocks: int = Field(default=4, ge=1, le=7, description="conv blocks, each halving the image side")
    norm: Literal["batch", "group"] = Field(
        default="batch", description="normalisation layers; DP-SGD needs group (BatchNorm mixes a batch's cases)"
    )
    lr: float = Field(default=1e-3, gt=0, le=1)
    batch_size: int = Field(default=32, ge=1, le=1024)
    augment: bool = Field(default=True, description="random left-right flips and small shifts while training")
    class_weighted: bool = Field(
        default=True,
        description="weight the cross-entropy by inverse class frequency of the site's training images "
        "(not under DP-SGD: the weights would be a statistic of the data outside the privacy accounting)",
    )
    split_sites: int = Field(default=3, ge=1, le=16, description="MIAS: sites the 161 patients are dealt to")
    site_shift: bool = Field(
        default=True, description="MIAS: give each site its own simulated acquisition (gamma, contrast, blur, noise)"
    )

    @model_validator(mode="after")
    def _blocks_fit_the_image(self) -> MammoTaskConfig:
        if self.image_size // 2**self.blocks < 1:
            raise ValueError(f"{self.blocks} blocks halve an image of side {self.image_size} below one pixel")
        return self

    @property
    def classes(self) -> tuple[str, ...]:
        return CLASSES[self.target]
