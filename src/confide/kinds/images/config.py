"""The image classification task's section of a job file (``task.name: image_classification``).

No torch here: the job file is read by every command, the server's included.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from confide.tasks.python_config import Device, Precision

Network = Literal["small_cnn", "resnet18", "resnet34", "densenet121"]
DEFAULT_WIDTH: dict[str, int] = {"small_cnn": 16, "resnet18": 64, "resnet34": 64, "densenet121": 64}
SYNTHETIC_CLASSES = ("0", "1", "2", "3", "4")  # the generated grades, in order
Augmentation = Literal["scaled", "flip_batch_shift"]


class SyntheticGradesSpec(BaseModel):
    """Generate colour images with five ordinal grades into ``data.root`` when it does not exist yet (see
    :func:`confide.kinds.images.synthetic.write_grades`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sites: int = Field(default=3, ge=1, le=32)
    patients: int = Field(default=60, ge=4, le=100_000, description="patients per site, two images (eyes) each")
    size: int = Field(default=128, ge=32, le=1024, description="side of the generated images (each camera varies it)")
    test_fraction: float = Field(default=0.25, gt=0, lt=1, description="share of patients in the given test split")
    format: Literal["png", "jpeg", "mixed"] = "png"
    seed: int = Field(default=0, ge=0, description="the generator's seed (the same seed writes the same images)")


class MiasSplit(BaseModel):
    """How a ``data.root`` holding the mini-MIAS films (``Info.txt``, ``images/mdbNNN.png``) becomes sites: its
    patients dealt to ``sites`` simulated sites (``mias-1``, ...), each with its own simulated acquisition when
    ``site_shift`` is on (see :mod:`confide.kinds.images.mias`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sites: int = Field(default=3, ge=1, le=16, description="sites the 161 MIAS patients are dealt to")
    site_shift: bool = Field(
        default=True, description="give each site its own simulated acquisition (gamma, contrast, blur, noise, matrix)"
    )


class ImageTaskConfig(BaseModel):
    """2D image classification: one folder per site with ``labels.csv`` (``file,label[,split][,patient]``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["image_classification"] = "image_classification"
    classes: tuple[str, ...] | None = Field(
        default=None,
        description="the labels, in order (for ordinal labels, lowest first); left out in a simulation, they are "
        "read from every site's labels.csv and printed so that you can fix them here; a deployment needs them",
    )
    ordinal: bool = Field(default=False, description="the classes are ordered grades: quadratic kappa is the headline")
    channels: Literal[1, 3] = Field(default=1, description="1: greyscale (colour converted), 3: colour (grey repeated)")
    image_size: int = Field(default=64, ge=16, le=1024, description="images are padded square and resized to this side")
    model: Network = Field(default="small_cnn", description="small_cnn, resnet18, resnet34 or densenet121 (MONAI)")
    width: int | None = Field(
        default=None,
        ge=4,
        le=512,
        description="channels of the network's first level (default small_cnn 16, resnet 64, densenet121 64 with "
        "growth rate width/2)",
    )
    blocks: int | None = Field(
        default=None, ge=1, le=7, description="small_cnn: conv blocks, each halving the side (default: fit the image)"
    )
    norm: Literal["batch", "group", "instance"] = Field(
        default="group",
        description="normalisation layers: group and instance work with DP-SGD and every strategy; batch is refused "
        "by DP-SGD (it mixes a batch's images) and keeps each site's statistics under FedBN",
    )
    intensity: Literal["standardize", "raw"] = Field(
        default="standardize",
        description="standardize: each image's channels scaled to mean 0 and standard deviation 1 before the network "
        "(removes a camera's brightness and colour cast); raw: pixels in [0, 1] as read",
    )
    dropout: float = Field(default=0.0, ge=0, lt=1, description="dropout before the classifier")
    augment: bool = Field(
        default=True, description="flips, small shifts and intensity jitter while training, milder on small images"
    )
    augmentation: Augmentation = Field(
        default="scaled",
        description="scaled: per image a flip, a shift, above 48 px a small rotation and zoom, and (intensity raw) "
        "brightness and contrast jitter, scaled to the image size; flip_batch_shift: per image a left-right flip, "
        "and one whole-pixel shift of the batch (up to a 16th of the side, zero padded)",
    )
    class_weighted: bool = Field(
        default=False,
        description="weight the cross-entropy by the inverse class frequency of the site's training images (refused "
        "under DP-SGD: the weights are a statistic of the site's data outside the privacy accounting)",
    )
    storage: Literal["float16", "float32"] = Field(
        default="float16",
        description="how a site holds its images in memory: float16 (half the memory, pixels to about 1e-4) or "
        "float32 (the pixels exactly as read and resized)",
    )
    lr: float = Field(default=1e-3, gt=0, le=10, allow_inf_nan=False, description="local learning rate")
    batch_size: int = Field(default=32, ge=1, le=100_000)
    optimizer: Literal["adam", "sgd"] = "adam"
    device: Device = "auto"
    precision: Precision = "float32"
    synthetic: SyntheticGradesSpec | None = Field(
        default=None, description="generate colour images with five ordinal grades into data.root when it is absent"
    )
    mias: MiasSplit = Field(
        default_factory=MiasSplit,
        description="when data.root is the mini-MIAS folder (it holds Info.txt): the sites its patients are dealt "
        "to; its classes are [F, G, D] (background tissue) or [normal, abnormal]",
    )
    _read_from_data: bool = PrivateAttr(default=False)  # classes completed by prepare, for the report's notes

    @model_validator(mode="before")
    @classmethod
    def _synthetic_grades(cls, document: Any) -> Any:
        """Generated images have known grades: they are the classes unless the job gives its own."""
        if isinstance(document, dict) and document.get("synthetic") is not None and document.get("classes") is None:
            return {**document, "classes": SYNTHETIC_CLASSES}
        return document

    @field_validator("classes")
    @classmethod
    def _classes(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        if value is None:
            return None
        names = tuple(str(v).strip() for v in value)
        if len(names) < 2:
            raise ValueError(f"at least two classes are needed, got {list(names)}")
        if any(not n for n in names):
            raise ValueError(f"a class name is empty: {list(value)}")
        folded = [n.casefold() for n in names]
        twice = sorted({n for n in names if folded.count(n.casefold()) > 1})
        if twice:
            raise ValueError(f"classes name {twice} more than once (labels are matched ignoring case)")
        return names

    @model_validator(mode="after")
    def _consistent(self) -> ImageTaskConfig:
        if self.blocks is not None and self.model != "small_cnn":
            raise ValueError(f"blocks sets small_cnn's depth; model {self.model} has its own")
        if self.model == "small_cnn" and self.image_size // 2 ** self.depth() < 1:
            raise ValueError(f"{self.blocks} blocks halve an image of side {self.image_size} below one pixel")
        if self.model == "densenet121" and self.image_size < 32:
            raise ValueError(
                f"densenet121 divides the side by 32: image_size must be at least 32, got {self.image_size}"
            )
        if self.synthetic is not None and self.classes is not None and len(self.classes) != len(SYNTHETIC_CLASSES):
            raise ValueError(f"synthetic images have grades {list(SYNTHETIC_CLASSES)}; classes is {list(self.classes)}")
        return self

    def depth(self) -> int:
        """small_cnn's number of blocks: as given, else as many as keep the side at 4 pixels or more (at most 5)."""
        if self.blocks is not None:
            return self.blocks
        return max(1, min(5, (self.image_size // 4).bit_length() - 1))

    def first_width(self) -> int:
        return self.width if self.width is not None else DEFAULT_WIDTH[self.model]

    @property
    def classes_read_from_data(self) -> bool:
        return self._read_from_data

    def with_classes(self, classes: tuple[str, ...], *, read_from_data: bool) -> ImageTaskConfig:
        """The config with ``classes`` set (checked as in a job file)."""
        out = type(self).model_validate({**self.model_dump(), "classes": classes})
        out._read_from_data = read_from_data
        return out
