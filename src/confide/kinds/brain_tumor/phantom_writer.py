"""Writing phantom federations to disk in the BraTS 2021 layout (one folder per site, one per case)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from confide.errors import ConfigError
from confide.kinds.brain_tumor.phantom_contrast import SiteProfile, default_site_profiles, profile_problems
from confide.kinds.brain_tumor.phantoms import FILE_SUFFIXES, MODALITIES, generate_case


def case_id(site_index: int, case_index: int) -> str:
    """BraTS-style case id from 0-based indices: ``case_id(0, 0) == "BraTS2021_s1_00001"``."""
    return f"BraTS2021_s{site_index + 1}_{case_index + 1:05d}"


def _save(volume: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(volume, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, path)


def _count(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ConfigError(f"{what} must be an integer >= 1 (got {value!r})")
    return int(value)


def write_federation(
    out: Path,
    sites: int,
    cases: int,
    seed: int,
    *,
    profiles: Sequence[SiteProfile] | None = None,
    on_case: Callable[[str, str], None] | None = None,
) -> list[Path]:
    """Write ``sites`` x ``cases`` phantoms under ``out`` in the BraTS 2021 layout.

    Files are ``out/<site name>/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` with case ids
    ``BraTS2021_s<site>_<case>`` (1-based numbers); the site folder is the profile name
    (``site-1`` ... for the default profiles). Case ``c`` of site ``s`` (0-based) draws from
    ``np.random.default_rng(np.random.SeedSequence([seed, s, c]))``, so a seed always produces the
    same files. ``out/phantoms.json`` records the seed, the counts, the profiles and each case's
    tumour. ``on_case(site_name, case_id)`` is called after each case is written.

    Returns the site folders in site order.

    Raises:
        ConfigError: ``sites`` or ``cases`` below 1, a negative seed, or ``profiles`` that do not
            match ``sites`` (count, duplicate names, invalid values).
    """
    n_sites = _count(sites, "sites (number of sites)")
    n_cases = _count(cases, "cases (cases per site)")
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0 (got {seed!r})")
    if profiles is None:
        chosen = default_site_profiles(n_sites)
    else:
        chosen = list(profiles)
        if len(chosen) != n_sites:
            raise ConfigError(
                f"profiles: got {len(chosen)} site profile(s) for sites={n_sites}; give exactly one per site"
            )
        names = [p.name for p in chosen]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"profiles: site names must be unique (repeated: {', '.join(duplicates)})")
        for profile in chosen:
            problems = profile_problems(profile)
            if problems:
                raise ConfigError(f"profiles: site profile {profile.name!r}: " + "; ".join(problems))

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    site_dirs: list[Path] = []
    record_sites: list[dict[str, Any]] = []
    for s, profile in enumerate(chosen):
        site_dir = out / profile.name
        site_dir.mkdir(parents=True, exist_ok=True)
        site_dirs.append(site_dir)
        case_records: list[dict[str, Any]] = []
        for c in range(n_cases):
            cid = case_id(s, c)
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), s, c]))
            case = generate_case(profile, rng)
            case_dir = site_dir / cid
            case_dir.mkdir(parents=True, exist_ok=True)
            for modality in MODALITIES:
                _save(case.images[modality], case.affine, case_dir / f"{cid}{FILE_SUFFIXES[modality]}.nii.gz")
            _save(case.label, case.affine, case_dir / f"{cid}{FILE_SUFFIXES['seg']}.nii.gz")
            labels_present = sorted(int(v) for v in np.unique(case.label))
            case_records.append({"case_id": cid, **case.info, "labels": labels_present})
            if on_case is not None:
                on_case(profile.name, cid)
        record_sites.append(
            {"site": profile.name, "folder": profile.name, "profile": asdict(profile), "cases": case_records}
        )

    record = {
        "generator": "confide.kinds.brain_tumor.phantoms",
        "format": "BraTS2021",
        "template": "MNI152 (nilearn bundled), 2 mm",
        "seed": int(seed),
        "sites": n_sites,
        "cases": n_cases,
        "rng": "numpy.random.default_rng(SeedSequence([seed, site_index, case_index])), 0-based indices",
        "labels": {"0": "background", "1": "necrotic / non-enhancing core", "2": "oedema", "4": "enhancing"},
        "files": {k: f"<case>{v}.nii.gz" for k, v in FILE_SUFFIXES.items()},
        "site_profiles": record_sites,
    }
    (out / "phantoms.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return site_dirs
