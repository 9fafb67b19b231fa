"""Presets of the image task: a job's ``task.name`` that stands for a configuration of ``image_classification``.

``mammo_density`` (job files written when mammography had its own task) is 2D mammogram classification with the
old task's fields and defaults::

    task: {name: mammo_density, target: density, image_size: 64, width: 8, norm: group, lr: 0.002}

``target`` picks the classes: ``density`` F, G, D (MIAS background tissue: fatty, fatty-glandular, dense-glandular;
ordinal), ``birads`` A, B, C, D (BI-RADS breast composition; ordinal), ``abnormal`` normal, abnormal. The rest is
the image task as mammograms were trained before: one grey channel, raw intensities, a small CNN of ``blocks``
blocks (``width`` channels, BatchNorm by default), a left-right flip per image and one shift per batch, the loss
weighted by inverse class frequency, the MIAS folder dealt to ``split_sites`` sites with their simulated
acquisitions (``site_shift``). :meth:`MammoDensityPreset.image_task` gives that configuration; the job file reads
a preset as the configuration it stands for. A field the preset does not have is refused by name. No torch here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from confide.kinds.images.config import ImageTaskConfig, MiasSplit

Target = Literal["density", "birads", "abnormal"]

# Class names in index order, and whether they are ordinal grades (the kappa's weights follow the order).
TARGETS: dict[str, tuple[tuple[str, ...], bool]] = {
    "density": (("F", "G", "D"), True),
    "birads": (("A", "B", "C", "D"), True),
    "abnormal": (("normal", "abnormal"), False),
}


class MammoDensityPreset(BaseModel):
    """2D mammogram classification: breast density (MIAS F/G/D or BI-RADS A-D) or abnormal vs normal."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["mammo_density"] = "mammo_density"
    target: Target = Field(
        default="density",
        description="density: F/G/D labels (3 classes); birads: A/B/C/D (4); abnormal: normal vs abnormal (2)",
    )
    image_size: int = Field(default=64, ge=16, le=1024, description="images are padded square and resized to this side")
    width: int = Field(default=16, ge=4, le=256, description="channels of the first conv block, doubled per block")
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
        "(refused under DP-SGD: the weights would be a statistic of the data outside the privacy accounting)",
    )
    split_sites: int = Field(default=3, ge=1, le=16, description="MIAS: sites the 161 patients are dealt to")
    site_shift: bool = Field(
        default=True, description="MIAS: give each site its own simulated acquisition (gamma, contrast, blur, noise)"
    )

    @model_validator(mode="after")
    def _blocks_fit_the_image(self) -> MammoDensityPreset:
        if self.image_size // 2**self.blocks < 1:
            raise ValueError(f"{self.blocks} blocks halve an image of side {self.image_size} below one pixel")
        return self

    @property
    def classes(self) -> tuple[str, ...]:
        return TARGETS[self.target][0]

    def image_task(self) -> ImageTaskConfig:
        """The image classification configuration this preset stands for."""
        classes, ordinal = TARGETS[self.target]
        return ImageTaskConfig(
            classes=classes,
            ordinal=ordinal,
            channels=1,
            image_size=self.image_size,
            model="small_cnn",
            width=self.width,
            blocks=self.blocks,
            norm=self.norm,
            intensity="raw",
            augment=self.augment,
            augmentation="flip_batch_shift",
            class_weighted=self.class_weighted,
            storage="float32",
            lr=self.lr,
            batch_size=self.batch_size,
            optimizer="adam",
            mias=MiasSplit(sites=self.split_sites, site_shift=self.site_shift),
        )
