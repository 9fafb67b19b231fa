from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from confide.cli_features import features_app
from confide.errors import ConfigError
from confide.features import ResNetTrunk, extract_features, image_tiles, load_resnet
from confide.kinds.mil.slides import read_bag

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tissue(rng: np.random.Generator, size: int) -> np.ndarray:
    """A pink-purple textured patch, as H&E stained tissue looks."""
    base = np.array([200, 110, 170], dtype=np.float64)
    return np.clip(base + rng.normal(0, 25, size=(size, size, 3)), 0, 255).astype(np.uint8)


def _tile_folders(root: Path, slides: int = 2, tiles: int = 5, size: int = 32) -> None:
    rng = np.random.default_rng(0)
    for s in range(slides):
        folder = root / f"slide{s}"
        folder.mkdir(parents=True)
        for t in range(tiles):
            Image.fromarray(_tissue(rng, size)).save(folder / f"tile_{t * size}_{s * size}.png")


def test_tiles_in_folders_become_readable_feature_files(tmp_path: Path) -> None:
    _tile_folders(tmp_path / "tiles")
    (tmp_path / "tiles" / "slide1" / "tile_999_999.png").write_bytes(b"broken png")

    report = extract_features(tmp_path / "tiles", tmp_path / "features", tile_size=32)

    assert [p.name for p in report.written] == ["slide0.safetensors", "slide1.safetensors"]
    bag = read_bag(report.written[0], slide="slide0", label=1, patient="p")
    assert bag.features.shape == (5, report.dim) and np.isfinite(bag.features).all()
    assert bag.coords is not None and bag.coords[:, 0].tolist() == [0, 32, 64, 96, 128]
    assert bag.features.std(axis=0).max() > 0  # tiles differ, so do their features
    assert [(s.item, "1 of 6 tiles unreadable" in s.reason) for s in report.skipped] == [("slide1", True)]
    assert len(read_bag(report.written[1], slide="slide1", label=0, patient="q")) == 5
    with safe_open(str(report.written[0]), framework="np") as handle:
        assert handle.metadata()["extractor"] == "colour-texture"
    again = extract_features(tmp_path / "tiles", tmp_path / "again", tile_size=32)
    np.testing.assert_array_equal(read_bag(again.written[0], slide="a", label=0, patient="a").features, bag.features)


def test_a_large_image_is_cut_into_tiles_and_background_skipped(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    image = np.full((64, 128, 3), 245, dtype=np.uint8)  # white glass ...
    image[:, 64:] = _tissue(rng, 64).repeat(1, axis=0)[:, :64]  # ... tissue on the right half
    image[:32, 32:64] = _tissue(rng, 32)  # and one more tissue tile on the left
    (tmp_path / "slides").mkdir()
    Image.fromarray(image).save(tmp_path / "slides" / "big.png")

    tiles = image_tiles(tmp_path / "slides" / "big.png", 32, min_tissue=0.5)
    report = extract_features(tmp_path / "slides", tmp_path / "features", tile_size=32)

    assert sorted(map(tuple, tiles.coords.tolist())) == [(32, 0), (64, 0), (64, 32), (96, 0), (96, 32)]
    bag = read_bag(report.written[0], slide="big", label=0, patient="big")
    assert len(bag) == 5
    batch, ok = tiles.read(0, 5)
    assert ok.all() and (batch.reshape(5, -1).mean(axis=1) < 230).all()  # no background tile among them


def test_resnet_weights_in_torchvision_names_are_loaded_from_safetensors(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trunk = ResNetTrunk("resnet18")
    state = {f"module.{k}": v for k, v in trunk.state_dict().items()}
    state["module.fc.weight"] = torch.zeros(10, 512)  # a classifier head is ignored
    save_file(state, str(tmp_path / "r18.safetensors"))
    _tile_folders(tmp_path / "tiles", slides=1, tiles=3)

    loaded = load_resnet(tmp_path / "r18.safetensors")
    report = extract_features(tmp_path / "tiles", tmp_path / "out", tile_size=32, weights=tmp_path / "r18.safetensors")

    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in trunk.state_dict().items())
    assert report.dim == 512 and report.extractor.startswith("resnet18")
    assert read_bag(report.written[0], slide="s", label=0, patient="s").features.shape == (3, 512)


def test_bad_weights_are_refused_with_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "model.pth").write_bytes(b"\x80\x04\x95 a pickle, never to be loaded")
    save_file({"conv1.weight": torch.zeros(64, 3, 7, 7)}, str(tmp_path / "partial.safetensors"))
    _tile_folders(tmp_path / "tiles", slides=1, tiles=2)

    with pytest.raises(ConfigError, match="not a readable safetensors file"):
        extract_features(tmp_path / "tiles", tmp_path / "out", weights=tmp_path / "model.pth")
    with pytest.raises(ConfigError, match=r"missing \['bn1.weight'"):
        load_resnet(tmp_path / "partial.safetensors", "resnet18")
    result = CliRunner().invoke(
        features_app,
        ["extract", str(tmp_path / "tiles"), str(tmp_path / "out"), "--weights", str(tmp_path / "model.pth")],
    )

    assert result.exit_code == 2 and "not a readable safetensors file" in " ".join(result.output.split())
    assert not (tmp_path / "out").exists()  # refused before any slide was read


def test_the_extract_command_writes_one_file_per_slide(tmp_path: Path) -> None:
    _tile_folders(tmp_path / "tiles", slides=2, tiles=3, size=40)

    result = CliRunner().invoke(
        features_app, ["extract", str(tmp_path / "tiles"), str(tmp_path / "out"), "--tile-size", "32", "--batch", "2"]
    )

    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["slide0.safetensors", "slide1.safetensors"]
    assert "colour-texture" in result.output
