"""The histopathology task's section of a job file: slide-level classification from bags of tile features."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from confide.tasks.python_config import Device, Precision


class SyntheticSlidesSpec(BaseModel):
    """Generate slides with a known signal into ``data.root`` when it does not exist yet
    (see :func:`confide.kinds.mil.slides.write_synthetic_slides`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sites: int = Field(default=4, ge=1, le=64)
    slides: int = Field(default=40, ge=4, le=100_000, description="slides per site")
    tiles: int = Field(default=200, ge=4, le=100_000, description="mean tiles per slide (each holds 0.5-1.5 times)")
    dim: int = Field(default=64, ge=2, le=8192, description="feature dimension")
    format: Literal["safetensors", "h5", "mixed"] = "safetensors"
    seed: int = Field(default=0, ge=0, description="the generator's seed (the slides do not depend on the job's)")


class MilTaskConfig(BaseModel):
    """Multiple-instance learning: one label per slide, learnt from its tiles' feature vectors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["mil"] = "mil"
    pooling: Literal["attention", "topk"] = Field(
        default="attention",
        description="attention: gated attention pooling (Ilse et al. 2018); topk: score every tile and classify "
        "from the mean of its top_k highest and top_k lowest scores (as CHOWDER)",
    )
    hidden: int = Field(default=64, ge=2, le=4096, description="width of the tile embedding")
    top_k: int = Field(default=5, ge=1, le=1000, description="topk pooling: highest and lowest tiles kept per class")
    dropout: float = Field(default=0.1, ge=0, lt=1)
    norm: Literal["layer", "batch", "none"] = Field(
        default="layer",
        description="normalisation of the tile embedding: layer (works with DP-SGD), batch (statistics over the "
        "tiles of a step; under strategy fedbn each site keeps its own, which absorbs scanner and stain shifts; "
        "refused under DP-SGD), none (strategy fedbn then has nothing to keep)",
    )
    classes: int = Field(default=2, ge=2, le=100, description="slide classes; labels.csv holds 0..classes-1")
    dim: int | None = Field(
        default=None,
        ge=1,
        description="tile feature dimension; learnt from the slides when left out, but a deployment's server, which "
        "sees no slides, needs it",
    )
    lr: float = Field(default=1e-3, gt=0, le=1)
    batch_size: int = Field(default=8, ge=1, le=1024, description="slides per step")
    max_tiles: int = Field(default=512, ge=1, le=1_000_000, description="tiles drawn per slide in a training step")
    device: Device = "auto"
    precision: Precision = "float32"
    synthetic: SyntheticSlidesSpec | None = None

    @model_validator(mode="after")
    def _consistent(self) -> MilTaskConfig:
        if self.synthetic is not None:
            if self.classes != 2:
                raise ValueError(f"synthetic slides have 2 classes, classes is {self.classes}")
            if self.dim is not None and self.dim != self.synthetic.dim:
                raise ValueError(f"dim {self.dim} differs from synthetic.dim {self.synthetic.dim}")
        return self
