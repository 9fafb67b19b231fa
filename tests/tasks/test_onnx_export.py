"""ONNX export checked against torch, and a network that cannot be exported named by its layer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from confide.errors import ConfigError
from confide.tasks.onnx_export import export_onnx


class DataDependent(torch.nn.Module):
    """A branch on a value of its input: torch.export cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if float(x.sum()) > 0:
            return x * 2
        return x


class Net(torch.nn.Module):
    def __init__(self, bad: bool) -> None:
        super().__init__()
        self.encoder = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU())
        self.head = DataDependent() if bad else torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def test_an_exportable_network_is_written_and_matches_torch(tmp_path: Path) -> None:
    torch.manual_seed(0)

    check = export_onnx(Net(bad=False), torch.randn(2, 3), tmp_path / "net.onnx")

    assert check.path.stat().st_size > 0 and check.outputs == 1
    assert check.max_abs_diff < 1e-5 and check.opset is not None


def test_a_network_that_cannot_be_exported_is_refused_naming_the_layer(tmp_path: Path) -> None:
    torch.manual_seed(0)

    with pytest.raises(ConfigError, match=r"layer 'head' \(DataDependent\)"):
        export_onnx(Net(bad=True), torch.randn(2, 3), tmp_path / "net.onnx")
    assert not list(tmp_path.iterdir())  # nothing half-written is left
