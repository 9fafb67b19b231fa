"""Finding BraTS-layout cases on disk and turning BraTS labels into tumour regions.

Two naming schemes are recognised, one folder per case:

* BraTS 2018-2021: ``<case>_t1``, ``<case>_t1ce``, ``<case>_t2``, ``<case>_flair`` and optionally
  ``<case>_seg``; labels 1 necrotic / non-enhancing core, 2 oedema, 4 enhancing tumour.
* BraTS 2023: ``<case>-t1n``, ``<case>-t1c``, ``<case>-t2w``, ``<case>-t2f`` and optionally
  ``<case>-seg``; labels 1 necrotic core, 2 oedema, 3 enhancing tumour.

Every file may be ``.nii.gz`` or ``.nii``. Inside Confide the modalities are always called
``t1``, ``t1c``, ``t2`` and ``flair``, in that order (:data:`MODALITIES`).

:func:`discover_cases` only looks at file names; reading and checking the voxels is the job of
:mod:`confide.kinds.brain_tumor.preprocess`. :func:`read_case_folder` reads one folder whose files use other
common names (``T1.nii.gz``, ``t1_gd.nii``, ``FLAIR.nii.gz`` ...), such as a case exported from TCIA.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

import numpy as np

from confide.errors import CaseError, ConfigError, DataError

MODALITIES: tuple[str, ...] = ("t1", "t1c", "t2", "flair")
"""The four MRI modalities of a case, in the channel order Confide uses everywhere."""

Naming = Literal["2021", "2023"]

NIFTI_EXTENSIONS: tuple[str, ...] = (".nii.gz", ".nii")

# Suffix (without extension) -> Confide name ("seg" for the segmentation), per naming scheme.
SCHEMES: Mapping[Naming, Mapping[str, str]] = MappingProxyType(
    {
        "2021": MappingProxyType({"_t1": "t1", "_t1ce": "t1c", "_t2": "t2", "_flair": "flair", "_seg": "seg"}),
        "2023": MappingProxyType({"-t1n": "t1", "-t1c": "t1c", "-t2w": "t2", "-t2f": "flair", "-seg": "seg"}),
    }
)

ENHANCING_LABEL: Mapping[Naming, int] = MappingProxyType({"2021": 4, "2023": 3})

# Lower-case names (separators removed) that read_case_folder accepts for each modality.
MODALITY_ALIASES: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "t1": frozenset({"t1", "t1n", "t1w", "t1native", "t1pre", "t1wpre"}),
        "t1c": frozenset({"t1c", "t1ce", "t1gd", "t1post", "t1wce", "t1cgd", "t1wgd", "t1wpost", "t1contrast", "t1wc"}),
        "t2": frozenset({"t2", "t2w"}),
        "flair": frozenset({"flair", "t2f", "t2flair", "t2wflair"}),
        "seg": frozenset({"seg", "label", "labels", "segmentation"}),
    }
)


@dataclass(frozen=True)
class BratsCase:
    """One case: the four modality files and, when there is one, the segmentation."""

    case_id: str
    folder: Path
    images: Mapping[str, Path] = field(hash=False)  # modality -> file, all four present
    seg: Path | None
    naming: Naming

    @property
    def enhancing_label(self) -> int:
        """The label value of enhancing tumour: 4 in BraTS 2018-2021, 3 in BraTS 2023."""
        return ENHANCING_LABEL[self.naming]


@dataclass(frozen=True)
class CaseProblem:
    """A folder that looks like a case but cannot be used, and why."""

    case_id: str
    folder: Path
    reason: str


def _split_nifti(name: str) -> tuple[str, str] | None:
    """Split ``name`` into (stem, extension) when it is a NIfTI file name, else return None."""
    lower = name.lower()
    for ext in NIFTI_EXTENSIONS:
        if lower.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], name[-len(ext) :]
    return None


def _is_nifti(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and _split_nifti(path.name) is not None


def _match_scheme(stem: str) -> tuple[Naming, str, str] | None:
    """Return (naming, confide name, case prefix) when ``stem`` ends with a BraTS suffix."""
    lower = stem.lower()
    for naming, suffixes in SCHEMES.items():
        for suffix, name in suffixes.items():
            if lower.endswith(suffix):
                return naming, name, stem[: -len(suffix)]
    return None


def _scheme_help() -> str:
    return (
        "BraTS 2018-2021 names (<case>_t1, <case>_t1ce, <case>_t2, <case>_flair[, <case>_seg]) and "
        "BraTS 2023 names (<case>-t1n, <case>-t1c, <case>-t2w, <case>-t2f[, <case>-seg]), "
        "each .nii.gz or .nii"
    )


def _assemble(
    case_id: str,
    folder: Path,
    claims: list[tuple[str, Path]],
    naming: Naming,
    require_seg: bool,
) -> BratsCase | CaseProblem:
    """Build a case from (confide name, file) claims, or describe why it cannot be one."""
    by_name: dict[str, list[Path]] = {}
    for name, path in claims:
        by_name.setdefault(name, []).append(path)
    for name in (*MODALITIES, "seg"):
        files = by_name.get(name, [])
        if len(files) > 1:
            listed = ", ".join(p.name for p in files)
            what = "the segmentation" if name == "seg" else f"modality {name!r}"
            return CaseProblem(case_id, folder, f"{len(files)} files claim {what}: {listed}")
    missing = [m for m in MODALITIES if m not in by_name]
    if missing:
        present = ", ".join(sorted(p.name for _, p in claims)) or "none"
        return CaseProblem(
            case_id,
            folder,
            f"missing modality {', '.join(repr(m) for m in missing)} (files present: {present})",
        )
    seg = by_name["seg"][0] if "seg" in by_name else None
    if require_seg and seg is None:
        return CaseProblem(case_id, folder, "no segmentation file (<case>_seg or <case>-seg) in the folder")
    images = MappingProxyType({m: by_name[m][0] for m in MODALITIES})
    return BratsCase(case_id=case_id, folder=folder, images=images, seg=seg, naming=naming)


def _case_from_folder(folder: Path, files: list[Path], case_id: str, require_seg: bool) -> BratsCase | CaseProblem:
    """Recognise the BraTS scheme of the NIfTI ``files`` directly inside ``folder``."""
    matched: list[tuple[Naming, str, str, Path]] = []
    for path in files:
        split = _split_nifti(path.name)
        hit = _match_scheme(split[0]) if split else None
        if hit is not None:
            matched.append((*hit, path))
    if not matched:
        names = ", ".join(p.name for p in files)
        return CaseProblem(
            case_id,
            folder,
            f"no file follows BraTS naming (files: {names}); looked for {_scheme_help()}; "
            "read folders with other names with confide.kinds.brain_tumor.brats.read_case_folder",
        )
    schemes = sorted({m[0] for m in matched})
    if len(schemes) > 1:
        detail = "; ".join(f"{s}: {', '.join(p.name for n, _, _, p in matched if n == s)}" for s in schemes)
        return CaseProblem(case_id, folder, f"files mix the BraTS 2021 and 2023 naming schemes ({detail})")
    naming = matched[0][0]
    result = _assemble(case_id, folder, [(name, path) for _, name, _, path in matched], naming, require_seg)
    if isinstance(result, CaseProblem):
        return result
    prefixes = sorted({prefix for _, _, prefix, _ in matched})
    if len(prefixes) > 1:
        detail = "; ".join(f"{pre!r}: {', '.join(p.name for _, _, q, p in matched if q == pre)}" for pre in prefixes)
        return CaseProblem(case_id, folder, f"files in one folder name different cases ({detail})")
    return result


def discover_cases(
    root: Path,
    *,
    require_seg: bool = False,
    on_problem: Literal["skip", "raise"] = "skip",
) -> tuple[list[BratsCase], list[CaseProblem]]:
    """Find every BraTS case under ``root``.

    Every folder under ``root`` (``root`` itself included, searched recursively, hidden entries
    ignored) that directly holds NIfTI files is one candidate case, named after the folder. Folders
    that cannot be used become :class:`CaseProblem` entries (``on_problem="skip"``) or raise
    :class:`~confide.errors.CaseError` (``on_problem="raise"``). Only file names are examined here.

    Returns the cases and the problems, both sorted by folder.

    Raises:
        ConfigError: ``on_problem`` is neither "skip" nor "raise".
        DataError: ``root`` does not exist or is not a folder, or no usable case is under it.
        CaseError: a folder is not a usable case and ``on_problem="raise"``.
    """
    if on_problem not in ("skip", "raise"):
        raise ConfigError(f"on_problem must be 'skip' or 'raise', got {on_problem!r}")
    root = Path(root)
    if not root.exists():
        raise DataError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"data folder {root} is not a folder")

    by_folder: dict[Path, list[Path]] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or not _is_nifti(path):
            continue
        by_folder.setdefault(path.parent, []).append(path)

    cases: list[BratsCase] = []
    problems: list[CaseProblem] = []
    seen_ids: dict[str, Path] = {}
    for folder in sorted(by_folder):
        case_id = folder.name or folder.resolve().name
        result = _case_from_folder(folder, by_folder[folder], case_id, require_seg)
        if isinstance(result, BratsCase) and case_id in seen_ids:
            result = CaseProblem(case_id, folder, f"another case under {root} has the same id (in {seen_ids[case_id]})")
        if isinstance(result, CaseProblem):
            if on_problem == "raise":
                raise CaseError(result.case_id, f"{result.reason} (folder {result.folder})")
            problems.append(result)
        else:
            seen_ids[case_id] = folder
            cases.append(result)

    if not cases:
        message = f"no BraTS case was found under {root}; looked for {_scheme_help()}"
        if problems:
            shown = "; ".join(f"{p.folder}: {p.reason}" for p in problems[:3])
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            message += f". {len(problems)} folder(s) could not be used: {shown}{more}"
        raise DataError(message)
    return cases, problems


def _alias_name(stem: str) -> str | None:
    """The Confide name ("t1", ..., "seg") a file stem stands for, or None."""
    tokens = [t for t in re.split(r"[-_.\s]+", stem.lower().replace("+", "")) if t]
    candidates = []
    if len(tokens) >= 2:
        candidates.append(tokens[-2] + tokens[-1])
    if tokens:
        candidates.append(tokens[-1])
    for candidate in candidates:
        for name, aliases in MODALITY_ALIASES.items():
            if candidate in aliases:
                return name
    return None


def read_case_folder(
    folder: Path,
    mapping: Mapping[str, str] | None = None,
    *,
    case_id: str | None = None,
    naming: Naming | None = None,
) -> BratsCase:
    """Read one case folder whose files may use BraTS names or other common modality names.

    Without ``mapping`` the modality of each NIfTI file is recognised from the end of its name,
    case-insensitively: ``t1``/``t1n``/``t1w`` -> t1; ``t1c``/``t1ce``/``t1gd``/``t1post`` -> t1c;
    ``t2``/``t2w`` -> t2; ``flair``/``t2f``/``t2_flair`` -> flair; ``seg``/``label`` -> segmentation.
    Other NIfTI files are ignored. ``mapping`` gives the file name (inside ``folder``) of each of
    ``t1``, ``t1c``, ``t2``, ``flair`` and optionally ``seg`` explicitly instead.

    ``naming`` states the label convention of the segmentation ("2021": 4 is enhancing,
    "2023": 3 is enhancing). It may be left out when the files use BraTS names (the scheme is then
    taken from them) or when there is no segmentation.

    Raises:
        DataError: ``folder`` does not exist.
        ConfigError: ``mapping`` names an unknown modality, or ``naming`` is needed and missing.
        CaseError: a file is missing, two files claim one modality, or a modality is absent.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"case folder {folder} does not exist or is not a folder")
    cid = case_id or folder.name or folder.resolve().name
    claims: list[tuple[str, Path]] = []
    if mapping is not None:
        unknown = sorted(set(mapping) - {*MODALITIES, "seg"})
        if unknown:
            raise ConfigError(f"modality mapping has unknown key(s) {unknown}; use {', '.join(MODALITIES)} and 'seg'")
        for name, file_name in mapping.items():
            path = folder / file_name
            if not path.is_file():
                raise CaseError(cid, f"file {path} given for {name!r} does not exist")
            claims.append((name, path))
        detected: Naming | None = None
    else:
        files = sorted(p for p in folder.iterdir() if _is_nifti(p))
        schemes: set[Naming | None] = set()
        for path in files:
            split = _split_nifti(path.name)
            stem = split[0] if split else path.name
            alias = _alias_name(stem)
            if alias is None:
                continue
            claims.append((alias, path))
            hit = _match_scheme(stem)
            schemes.add(hit[0] if hit is not None and hit[1] == alias else None)
        # The label convention follows from the names only when every file uses one BraTS scheme.
        detected = schemes.pop() if len(schemes) == 1 else None
    has_seg = any(name == "seg" for name, _ in claims)
    chosen = naming or detected
    if chosen is None:
        if has_seg:
            raise ConfigError(
                f"case folder {folder} has a segmentation but its names do not tell the label convention; "
                "pass naming='2021' (4 = enhancing tumour) or naming='2023' (3 = enhancing tumour)"
            )
        chosen = "2023"
    if chosen not in ENHANCING_LABEL:
        raise ConfigError(f"naming must be '2021' or '2023', got {chosen!r}")
    result = _assemble(cid, folder, claims, chosen, require_seg=False)
    if isinstance(result, CaseProblem):
        raise CaseError(cid, f"{result.reason} (folder {folder})")
    return result


def labels_to_regions(label: np.ndarray, enhancing_label: int) -> np.ndarray:
    """Turn a BraTS label map into the three nested tumour regions.

    Returns a bool array of shape ``(3, *label.shape)``: channel 0 whole tumour (WT, any tumour
    label), 1 tumour core (TC, necrotic core or enhancing), 2 enhancing tumour (ET).

    Raises:
        ConfigError: ``enhancing_label`` is neither 3 nor 4.
        DataError: ``label`` holds values other than 0, 1, 2 and ``enhancing_label``.
    """
    if enhancing_label not in (3, 4):
        raise ConfigError(f"enhancing_label must be 3 (BraTS 2023) or 4 (BraTS 2018-2021), got {enhancing_label}")
    label = np.asarray(label)
    allowed = np.array([0, 1, 2, enhancing_label])
    values = np.unique(label)
    unexpected = values[~np.isin(values, allowed)]
    if unexpected.size:
        shown = ", ".join(str(v) for v in unexpected[:10].tolist())
        raise DataError(
            f"label map holds unexpected value(s) {shown}; expected only 0, 1, 2 and {enhancing_label} "
            f"({'BraTS 2023' if enhancing_label == 3 else 'BraTS 2018-2021'} labels)"
        )
    enhancing = label == enhancing_label
    core = (label == 1) | enhancing
    whole = core | (label == 2)
    return np.stack([whole, core, enhancing])
