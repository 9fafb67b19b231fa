"""Tissue contrast tables and hospital site profiles for the synthetic brain-tumour phantoms.

:mod:`confide.kinds.brain_tumor.phantoms` paints each voxel as a mixture of tissue classes (grey matter, white
matter, CSF and the tumour compartments) and gives every class a relative intensity per MRI
modality from :data:`TISSUE_INTENSITY`. The values follow the usual appearance of a glioma on
clinical MRI, relative to normal white matter on T1:

* T1: white matter brighter than grey matter, CSF dark; oedema and necrosis hypointense.
* T1c (T1 after gadolinium): as T1, plus a bright enhancing rim (``SiteProfile.enhancement``).
* T2: fluid bright; oedema and necrosis hyperintense, white matter darkest.
* FLAIR: as T2 but with free fluid (CSF) suppressed, so oedema is the brightest tissue.

A :class:`SiteProfile` describes one hospital: its scanner (intensity scale, bias field, noise,
voxel grid, sequence contrast) and its patients (tumour size and grade). :func:`default_site_profiles`
returns deliberately different, deterministic profiles, so that a model trained at one site
alone generalises poorly to the others.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from confide.errors import ConfigError

MODALITIES: tuple[str, ...] = ("t1", "t1c", "t2", "flair")
"""The modality keys of a phantom, in the order of ``SiteProfile.modality_gain``."""

TISSUES: tuple[str, ...] = ("gm", "wm", "csf", "oedema", "necrosis", "enhancing", "nonenhancing")
"""Tissue classes. ``nonenhancing`` is the solid core of a low-grade tumour (label 1, like necrosis)."""


def _table(
    values: dict[str, tuple[float, float, float, float, float, float, float]],
) -> Mapping[str, Mapping[str, float]]:
    return MappingProxyType(
        {modality: MappingProxyType(dict(zip(TISSUES, row, strict=True))) for modality, row in values.items()}
    )


TISSUE_INTENSITY: Mapping[str, Mapping[str, float]] = _table(
    {
        #          gm    wm    csf   oedema necrosis enhancing nonenhancing
        "t1": (0.65, 1.00, 0.20, 0.55, 0.30, 0.70, 0.50),
        "t1c": (0.65, 1.00, 0.20, 0.55, 0.30, 0.70, 0.52),
        "t2": (0.65, 0.45, 1.30, 1.05, 1.20, 0.80, 1.10),
        "flair": (0.70, 0.50, 0.10, 1.20, 0.60, 0.95, 1.05),
    }
)
"""Relative intensity of each tissue per modality, before site effects (white matter T1 = 1).

The enhancing tissue of ``t1c`` additionally gains ``SiteProfile.enhancement``."""

TEMPLATE_DETAIL_WEIGHT: Mapping[str, float] = MappingProxyType({"t1": 1.0, "t1c": 1.0, "t2": -0.8, "flair": -0.5})
"""How the fine anatomy of the MNI T1 template that the tissue mixture misses (deep grey nuclei,
small sulci) carries into each modality: T1-like contrast keeps its sign, T2-like contrast inverts it."""


@dataclass(frozen=True)
class SiteProfile:
    """One hospital: how its scanner acquires images and which tumours its patients have.

    Attributes:
        name: site name, also the folder name written by ``write_federation`` (e.g. ``"site-1"``).
        modality_gain: scanner intensity scale for t1, t1c, t2 and flair (white matter maps to
            about this value on T1).
        bias_strength: amplitude of the smooth multiplicative bias field: the field is
            ``exp(bias_strength * f)`` with ``f`` a smooth random field scaled to ``[-1, 1]`` over the
            volume (0 = no bias field).
        noise_sigma: standard deviation of the (Rician) noise, relative to the white-matter
            intensity of each modality.
        voxel_size: voxel size in mm of the written grid, e.g. ``(2, 2, 2)`` or ``(2, 2, 4)``.
        radius_mm: range of the tumour core radius in mm (the core excludes oedema).
        high_grade_fraction: fraction of high-grade cases (enhancing rim around a necrotic core);
            the other cases are low grade (non-enhancing core, never label 4).
        enhancement: extra T1c intensity of enhancing tumour (contrast-agent dose and timing).
        contrast_gamma: per-modality power applied to the relative tissue intensities before the
            gain, standing for different sequence parameters (echo and repetition times).
    """

    name: str
    modality_gain: tuple[float, float, float, float]
    bias_strength: float
    noise_sigma: float
    voxel_size: tuple[float, float, float]
    radius_mm: tuple[float, float]
    high_grade_fraction: float
    enhancement: float
    contrast_gamma: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        problems = profile_problems(self)
        if problems:
            raise ConfigError(f"site profile {self.name!r}: " + "; ".join(problems))


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def profile_problems(profile: SiteProfile) -> list[str]:
    """Return what is wrong with ``profile`` (an empty list when it is usable)."""
    problems: list[str] = []
    if not profile.name or not all(c.isalnum() or c in "-_." for c in profile.name) or profile.name[0] == ".":
        problems.append(
            f"name must be a non-empty folder name of letters, digits, '-', '_', '.' (got {profile.name!r})"
        )

    def check(field: str, values: tuple[float, ...], size: int, low: float, high: float) -> None:
        if len(values) != size or not all(_finite(v) and low <= v <= high for v in values):
            problems.append(f"{field} must be {size} number(s) in [{low:g}, {high:g}] (got {values!r})")

    check("modality_gain", tuple(profile.modality_gain), 4, 1e-6, 1e6)
    check("bias_strength", (profile.bias_strength,), 1, 0.0, 1.0)
    check("noise_sigma", (profile.noise_sigma,), 1, 0.0, 1.0)
    check("voxel_size", tuple(profile.voxel_size), 3, 1.0, 8.0)
    check("radius_mm", tuple(profile.radius_mm), 2, 3.0, 30.0)
    check("high_grade_fraction", (profile.high_grade_fraction,), 1, 0.0, 1.0)
    check("enhancement", (profile.enhancement,), 1, 0.0, 3.0)
    check("contrast_gamma", tuple(profile.contrast_gamma), 4, 0.25, 4.0)
    if len(profile.radius_mm) == 2 and profile.radius_mm[0] > profile.radius_mm[1]:
        problems.append(f"radius_mm must be (low, high) with low <= high (got {profile.radius_mm!r})")
    return problems


_BASE_PROFILES: tuple[SiteProfile, ...] = (
    # A university hospital on a 3 T scanner: referrals of large glioblastomas, clean images.
    SiteProfile(
        name="site-1",
        modality_gain=(1000.0, 1050.0, 950.0, 900.0),
        bias_strength=0.05,
        noise_sigma=0.02,
        voxel_size=(2.0, 2.0, 2.0),
        radius_mm=(18.0, 28.0),
        high_grade_fraction=0.9,
        enhancement=0.8,
    ),
    # A district hospital on an old 1.5 T scanner: small, mostly low-grade tumours, thick slices,
    # strong coil inhomogeneity and noise.
    SiteProfile(
        name="site-2",
        modality_gain=(450.0, 480.0, 620.0, 520.0),
        bias_strength=0.35,
        noise_sigma=0.07,
        voxel_size=(2.0, 2.0, 4.0),
        radius_mm=(10.0, 16.0),
        high_grade_fraction=0.2,
        enhancement=0.6,
    ),
    # A hospital with another vendor's sequences: different contrast per modality and a low
    # contrast-agent dose, so enhancement is weak.
    SiteProfile(
        name="site-3",
        modality_gain=(1800.0, 2400.0, 1200.0, 3000.0),
        bias_strength=0.15,
        noise_sigma=0.04,
        voxel_size=(2.0, 2.0, 2.0),
        radius_mm=(13.0, 22.0),
        high_grade_fraction=0.6,
        enhancement=0.3,
        contrast_gamma=(1.25, 1.25, 0.85, 1.15),
    ),
    # A busy hospital with fast, noisy protocols that sees tumours early: small to medium, mostly high grade.
    SiteProfile(
        name="site-4",
        modality_gain=(750.0, 800.0, 1400.0, 1000.0),
        bias_strength=0.10,
        noise_sigma=0.10,
        voxel_size=(2.0, 2.0, 2.0),
        radius_mm=(10.0, 18.0),
        high_grade_fraction=0.8,
        enhancement=0.7,
        contrast_gamma=(1.0, 1.0, 1.1, 0.9),
    ),
)


def _variant(base: SiteProfile, index: int, cycle: int) -> SiteProfile:
    """Deterministic variation of ``base`` for the ``cycle``-th repetition (cycle >= 1)."""
    sign = 1.0 if cycle % 2 else -1.0
    step = min(0.1 * ((cycle + 1) // 2), 0.3)
    scale = 1.0 + sign * step
    low, high = base.radius_mm
    radius = (
        min(max(low * (1.0 - 0.5 * sign * step), 8.0), 28.0),
        min(max(high * (1.0 - 0.5 * sign * step), 12.0), 30.0),
    )
    return SiteProfile(
        name=f"site-{index + 1}",
        modality_gain=(
            base.modality_gain[0] * scale,
            base.modality_gain[1] * scale,
            base.modality_gain[2] / scale,
            base.modality_gain[3] * (1.0 + 0.5 * sign * step),
        ),
        bias_strength=min(base.bias_strength + 0.05 * (cycle % 3), 0.5),
        noise_sigma=min(base.noise_sigma * (1.0 + 0.5 * sign * step), 0.2),
        voxel_size=base.voxel_size,
        radius_mm=(min(radius), max(radius)),
        high_grade_fraction=min(max(base.high_grade_fraction - 0.5 * sign * step, 0.0), 1.0),
        enhancement=max(base.enhancement * (1.0 - 0.5 * sign * step), 0.1),
        contrast_gamma=base.contrast_gamma,
    )


def default_site_profiles(n_sites: int) -> list[SiteProfile]:
    """Return ``n_sites`` deterministic, strongly different site profiles named ``site-1`` ...

    The first four are distinct hospital archetypes (large high-grade tumours on a clean scanner;
    small low-grade tumours with thick slices, bias and noise; other sequence contrast and weak
    enhancement; mixed tumours with high noise). Further sites cycle through them with
    deterministic changes of gain, noise, bias, tumour size, grade mix and enhancement.
    """
    if isinstance(n_sites, bool) or not isinstance(n_sites, int) or n_sites < 1:
        raise ConfigError(f"number of sites must be an integer >= 1 (got {n_sites!r})")
    profiles: list[SiteProfile] = []
    for index in range(n_sites):
        base = _BASE_PROFILES[index % len(_BASE_PROFILES)]
        cycle = index // len(_BASE_PROFILES)
        profiles.append(base if cycle == 0 else _variant(base, index, cycle))
    return profiles
