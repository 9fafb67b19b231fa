"""The networks of the image task: a small CNN (the default, quick on a CPU) or a MONAI network.

- ``small_cnn``: ``blocks`` blocks of two 3x3 convolutions (each followed by the normalisation and a ReLU) and 2x2
  max pooling, channels ``width`` doubled per block up to 8x; global average pooling, dropout, a linear head.
- ``resnet18`` / ``resnet34``: :func:`monai.networks.nets.resnet18` / ``resnet34`` in 2D, ``width / 64`` as MONAI's
  widen factor. The stem follows the image size: ImageNet's (7x7 stride 2 convolution and max pooling) from 128
  pixels, else a 3x3 stride 1 convolution without pooling, so that small images keep their detail.
- ``densenet121``: :class:`monai.networks.nets.DenseNet121` in 2D, ``width`` initial features, growth rate width / 2.

``norm``: MONAI builds its networks with BatchNorm; for ``group`` each BatchNorm layer of C channels becomes a
GroupNorm of gcd(C, 8) groups, for ``instance`` a GroupNorm of C groups (instance normalisation with a learnt scale
and shift per channel). Both work on one image at a time, which DP-SGD needs (it refuses BatchNorm, naming it).
"""

from __future__ import annotations

import math

import torch

from confide.kinds.images.config import ImageTaskConfig

STEM_FROM = 128  # image side from which the ResNets use ImageNet's downsampling stem


def norm_layer(kind: str, channels: int) -> torch.nn.Module:
    if kind == "batch":
        return torch.nn.BatchNorm2d(channels)
    if kind == "instance":
        return torch.nn.GroupNorm(channels, channels)
    return torch.nn.GroupNorm(math.gcd(channels, 8), channels)


def replace_batch_norms(module: torch.nn.Module, kind: str) -> torch.nn.Module:
    """``module`` with every BatchNorm2d swapped for the ``kind`` of normalisation, under the same name."""
    if kind == "batch":
        return module
    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.BatchNorm2d):
            module._modules[name] = norm_layer(kind, child.num_features)
        else:
            replace_batch_norms(child, kind)
    return module


def small_cnn(config: ImageTaskConfig, n_classes: int) -> torch.nn.Module:
    layers: list[torch.nn.Module] = []
    channels_in = config.channels
    for block in range(config.depth()):
        channels = config.first_width() * 2 ** min(block, 3)
        for conv_in in (channels_in, channels):
            layers += [
                torch.nn.Conv2d(conv_in, channels, 3, padding=1, bias=False),
                norm_layer(config.norm, channels),
                torch.nn.ReLU(),
            ]
        layers.append(torch.nn.MaxPool2d(2))
        channels_in = channels
    layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()]
    if config.dropout > 0:
        layers.append(torch.nn.Dropout(config.dropout))
    layers.append(torch.nn.Linear(channels_in, n_classes))
    return torch.nn.Sequential(*layers)


def monai_network(config: ImageTaskConfig, n_classes: int) -> torch.nn.Module:
    from monai.networks import nets

    width = config.first_width()
    if config.model == "densenet121":
        network: torch.nn.Module = nets.DenseNet121(
            spatial_dims=2,
            in_channels=config.channels,
            out_channels=n_classes,
            init_features=width,
            growth_rate=max(width // 2, 2),
            dropout_prob=config.dropout,
        )
    else:
        large = config.image_size >= STEM_FROM
        build = nets.resnet18 if config.model == "resnet18" else nets.resnet34
        network = build(
            spatial_dims=2,
            n_input_channels=config.channels,
            num_classes=n_classes,
            widen_factor=width / 64,
            conv1_t_size=7 if large else 3,
            conv1_t_stride=2 if large else 1,
            no_max_pool=not large,
        )
        if config.dropout > 0 and network.fc is not None:
            network.fc = torch.nn.Sequential(torch.nn.Dropout(config.dropout), network.fc)  # type: ignore[assignment]
    return replace_batch_norms(network, config.norm)


class Standardize(torch.nn.Module):
    """Each image's channels scaled to mean 0 and standard deviation 1 (a constant channel to 0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = x.std(dim=(2, 3), keepdim=True, unbiased=False)
        return (x - mean) / (std + 1e-6)


def build_network(config: ImageTaskConfig, n_classes: int) -> torch.nn.Module:
    """The untrained network the config names, for ``n_classes`` classes (torch's generator draws its weights)."""
    network = small_cnn(config, n_classes) if config.model == "small_cnn" else monai_network(config, n_classes)
    if config.intensity == "standardize":
        return torch.nn.Sequential(Standardize(), network)
    return network
