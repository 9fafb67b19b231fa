"""Augmentation: reproducible from the generator it is given, shape-preserving, mild on small images."""

from __future__ import annotations

import torch

from confide.kinds.images.augment import augment_batch, augment_spec, flip_and_shift_batch


def _batch(n: int = 6, channels: int = 3, side: int = 28) -> torch.Tensor:
    return torch.rand(n, channels, side, side, generator=torch.Generator().manual_seed(1))


def test_the_same_seed_gives_the_same_augmentation_and_another_seed_another() -> None:
    x = _batch(side=64)
    spec = augment_spec(64)

    first = augment_batch(x, spec, torch.Generator().manual_seed(5))
    again = augment_batch(x, spec, torch.Generator().manual_seed(5))
    other = augment_batch(x, spec, torch.Generator().manual_seed(6))

    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first, x)


def test_augmentation_keeps_shape_dtype_and_range() -> None:
    for side, channels in ((16, 1), (28, 3), (96, 1), (128, 3)):
        x = _batch(channels=channels, side=side)

        out = augment_batch(x, augment_spec(side), torch.Generator().manual_seed(side))

        assert out.shape == x.shape and out.dtype == x.dtype
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_small_images_are_moved_by_whole_pixels_only() -> None:
    # at 28 px there is no rotation or zoom: a flip and a whole-pixel shift move a sharp square without blurring it
    spec = augment_spec(28)
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 10:18, 10:18] = 1.0  # a bright square on black

    out = augment_batch(x, spec, torch.Generator().manual_seed(0))

    assert spec.whole_pixels and spec.rotate_deg == 0 and spec.zoom == 0 and spec.shift_px == 1
    bright = out[0, 0] > out[0, 0].mean()
    assert int(bright.sum()) == 64  # still an 8 x 8 square: no blur from sub-pixel resampling
    rows, cols = torch.nonzero(bright, as_tuple=True)
    assert int(rows.max() - rows.min()) == 7 and int(cols.max() - cols.min()) == 7
    assert abs(int(rows.min()) - 10) <= 1 and abs(int(cols.min()) - 10) <= 1


def test_larger_images_get_rotation_and_zoom_growing_with_the_side() -> None:
    assert augment_spec(64).rotate_deg < augment_spec(96).rotate_deg == augment_spec(512).rotate_deg == 10.0
    assert augment_spec(128).shift_px > augment_spec(64).shift_px


def test_without_intensity_changes_only_the_geometry_changes() -> None:
    x = _batch(n=4, channels=3, side=28)
    spec = augment_spec(28, intensity=False)

    out = augment_batch(x, spec, torch.Generator().manual_seed(2))

    assert spec.brightness == spec.contrast == spec.colour == 0
    # whole-pixel moves only: every output value is one of the image's own (to rounding), none blurred between two
    for before, after in zip(x, out, strict=True):
        nearest = (after.reshape(-1, 1) - before.reshape(1, -1)).abs().min(dim=1).values
        assert float(nearest.max()) < 1e-5
    assert not torch.equal(out, x)


def test_an_empty_batch_passes_through() -> None:
    x = torch.zeros(0, 1, 32, 32)

    assert augment_batch(x, augment_spec(32), torch.Generator()).shape == (0, 1, 32, 32)


def test_flip_and_shift_batch_flips_images_and_shifts_the_batch_by_whole_pixels() -> None:
    x = torch.zeros(8, 1, 32, 32)
    x[:, 0, 10:14, 4:8] = 1.0  # a square left of centre in every image

    out = flip_and_shift_batch(x, torch.Generator().manual_seed(3))
    again = flip_and_shift_batch(x, torch.Generator().manual_seed(3))

    assert torch.equal(out, again) and out.shape == x.shape
    assert set(out.unique().tolist()) <= {0.0, 1.0}  # whole pixels: nothing interpolated
    columns = [int(torch.nonzero(image[0].sum(0)).min()) for image in out]
    rows = {int(torch.nonzero(image[0].sum(1)).min()) for image in out}
    assert len(rows) == 1 and abs(rows.pop() - 10) <= 2  # one shift for the batch, at most 32 / 16 pixels
    assert {c < 16 for c in columns} == {True, False}  # some images flipped, some not
    assert flip_and_shift_batch(x[:0], torch.Generator()).shape == (0, 1, 32, 32)
