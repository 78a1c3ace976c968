"""Pair raw BIDS runs with their preprocessed derivatives (fMRIPrep, or AFNI-cleaned Narratives).

Discovery (:func:`wav2brain.data.bids.discover_runs`) reads the raw dataset: events, stimulus,
onset, sidecar TR. :func:`pair_derivatives` then swaps each run's image for its derivative in one
output space, matched by the run's entities (``sub``, ``ses``, ``task``, ``acq``, ``run``,
``echo``...; every entity of the raw file name except ``space``/``res``/``den``/``hemi``/``desc``):

* volumes: ``<entities>_space-<space>[_res-<r>]_desc-<desc>_bold.nii[.gz]``;
* surfaces: ``<entities>[_hemi-L]_space-<space>[_desc-<desc>][_bold].func.gii`` with its
  ``hemi-R`` partner (fMRIPrep 20.2+ writes ``_hemi-L_space-fsaverage_bold.func.gii``, fMRIPrep
  1.x-20.1 and Narratives ``_space-fsaverage6_hemi-L.func.gii``; a surface without ``desc`` is
  fMRIPrep's ``preproc`` output);
* the brain mask ``<entities>_space-<space>[_res-<r>]_desc-brain_mask.nii[.gz]`` (volumes), used
  instead of a computed EPI mask (:attr:`~wav2brain.data.bids.RunSpec.mask_path`);
* the confounds table beside the derivative (:func:`wav2brain.data.bids.find_confounds`);
* the derivative's sidecar (BIDS inheritance inside the derivatives tree): its
  ``RepetitionTime`` joins the run's TR sources, and its ``SliceTimingCorrected``/``StartTime``
  give the slice-time reference (:func:`wav2brain.data.timing.slice_time_reference`).

A derivative whose sidecar says nothing about slice timing (none, or no ``SliceTimingCorrected``:
sidecars not copied, another pipeline) while its raw run has ``SliceTiming`` is refused unless
the reference is given (``--slice-time-reference``): it was corrected or it was not, and the two
differ by about half a TR, too much to guess.

fMRIPrep before 20.2 corrected slice timing (AFNI ``3dTshift`` without ``-tzero``, which aligns
every slice to the *mean* of the slice times) but wrote neither key. For a derivative tree whose
``dataset_description.json`` names fMRIPrep older than 20.2 and a raw sidecar with
``SliceTiming``, the reference is therefore that mean (Narratives, fMRIPrep 1.5: about 0.7 s at TR
1.5 s), and the card says it was inferred; taking 0 would place every TR 0.7 s early.

A multi-echo raw run (``echo-<k>``) pairs with the derivative of its own echo when there is one,
else with the run's echo-less derivative (fMRIPrep's optimally combined output). A run without a
derivative in the space, a derivative without a raw run, and two candidates for one run are errors
that name the files and what exists.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from wav2brain.data.bids import (
    BOLD_SUFFIXES,
    RunSpec,
    find_confounds,
    is_junk,
    parse_entities,
    read_sidecar,
)
from wav2brain.data.timing import slice_time_reference

DEFAULT_SPACE = "MNI152NLin2009cAsym"
"""fMRIPrep's default standard space (and Narratives' volumetric space)."""

DERIVED_ENTITIES = ("space", "res", "den", "hemi", "desc")
"""Entities that name a derivative of a run, not the run."""

_NUMERIC_LABELS = ("run", "echo")
"""Entities whose labels are indices: ``run-1`` and ``run-01`` are the same run."""

_ENTITY = re.compile(r"^([a-zA-Z0-9]+)-([a-zA-Z0-9.+]+)$")

_STC_VERSION = (20, 2)
"""First fMRIPrep version that writes ``SliceTimingCorrected``/``StartTime``."""


@dataclasses.dataclass(frozen=True)
class _Derivative:
    """One derivative image or mask file, parsed."""

    path: Path
    key: tuple[tuple[str, str], ...]
    entities: dict
    kind: str  # "volume", "surface" or "mask"


def pair_derivatives(
    runs: Sequence[RunSpec],
    bids_root: str | Path,
    derivatives: str | Path,
    space: str = DEFAULT_SPACE,
    desc: str = "preproc",
    res: str | None = None,
    masks_from: str | Path | None = None,
) -> list[RunSpec]:
    """Each raw run with its derivative image, brain mask, sidecar TR/slice timing and confounds.

    Parameters
    ----------
    runs : sequence of RunSpec
        Raw runs from :func:`wav2brain.data.bids.discover_runs` (events, stimulus, onset).
    bids_root : path
        The raw dataset (its sidecars give ``SliceTiming`` for old fMRIPrep output).
    derivatives : path
        Root of a derivatives tree (``derivatives/fmriprep``, ``derivatives/afni-nosmooth``),
        holding ``sub-*/[ses-*/]func/`` folders.
    space : str
        Output space: ``MNI152NLin2009cAsym``, ``T1w``, ``fsaverage6``, ``fsnative``...
    desc : str
        ``desc-`` of the image (``preproc`` for fMRIPrep, ``clean`` for Narratives' AFNI output).
    res : str, optional
        ``res-``/``den-`` label, needed only when one space has several resolutions.
    masks_from : path, optional
        Derivatives tree searched for the brain masks (default: ``derivatives``); Narratives'
        cleaned volumes take the masks of its fMRIPrep tree. When ``derivatives`` names no
        fMRIPrep version, this tree's is used for the slice-timing inference (module docstring):
        images cleaned from fMRIPrep output keep its slice timing.

    Returns
    -------
    list of RunSpec
        In the order of ``runs``, with ``bold_path``, ``space``, ``mask_path``,
        ``confounds_path``, ``tr``/``tr_sources`` and the slice-time reference replaced.

    Raises
    ------
    FileNotFoundError
        No such derivatives folder.
    ValueError
        A run with no derivative in ``space`` (the run, the space and the spaces that exist for
        it are named), several candidates for one run, a derivative (of a subject being
        prepared) without a raw run, a surface without its right hemisphere, a run from a
        preprocessed array.
    """
    root = Path(derivatives)
    if not root.is_dir():
        raise FileNotFoundError(f"derivatives folder not found: {root}")
    mask_root = Path(masks_from) if masks_from is not None else root
    if not mask_root.is_dir():
        raise FileNotFoundError(f"derivatives folder for masks not found: {mask_root}")
    files = _index(root)
    masks = files if mask_root == root else _index(mask_root)
    images = [f for f in files if f.kind != "mask" and _in_space(f, space, desc, res)]
    fmriprep_version = _fmriprep_version(root)
    if fmriprep_version is None and mask_root != root:
        fmriprep_version = _fmriprep_version(mask_root)  # images made from that fMRIPrep output
    paired = []
    claimed: set[Path] = set()
    for run in runs:
        if run.is_array:
            raise ValueError(
                f"{run.key}: {run.bold_path} is a preprocessed array; derivatives pair raw images"
            )
        key = _run_key(run)
        candidates = [f for f in images if f.key == key]
        if not candidates and run.echo is not None:  # fMRIPrep combines the echoes of a run
            single = tuple(pair for pair in key if pair[0] != "echo")
            candidates = [f for f in images if f.key == single]
        if not candidates:
            raise ValueError(_missing_message(run, key, files, root, space, desc, res))
        if len(candidates) > 1:
            listed = ", ".join(str(c.path) for c in candidates)
            raise ValueError(
                f"{run.key}: {len(candidates)} derivatives in space {space!r} with desc "
                f"{desc!r}: {listed}; choose one with res (the res-/den- label)"
            )
        image = candidates[0]
        claimed.add(image.path)
        paired.append(
            _paired_run(run, image, masks, space, Path(bids_root), root, fmriprep_version)
        )
    _check_orphans(images, claimed, runs, Path(bids_root), space, desc)
    return paired


def _paired_run(
    run: RunSpec,
    image: _Derivative,
    masks: Sequence[_Derivative],
    space: str,
    bids_root: Path,
    root: Path,
    fmriprep_version: tuple[int, ...] | None,
) -> RunSpec:
    from wav2brain.data.fmri import right_hemisphere

    mask_path = None
    if image.kind == "surface":
        right = right_hemisphere(image.path)
        if right is not None and not right.is_file():
            raise ValueError(
                f"{run.key}: surface {image.path} has no right hemisphere {right.name}"
            )
    else:
        res = image.entities.get("res")
        found = [
            m.path
            for m in masks
            if m.kind == "mask"
            and m.key == image.key
            and m.entities.get("space") == space
            and m.entities.get("res") == res
        ]
        if len(found) > 1:
            raise ValueError(f"{run.key}: several brain masks {[str(p) for p in found]}")
        mask_path = found[0] if found else None
    sidecar = read_sidecar(image.path, root)
    sources = list(run.tr_sources)
    if not sources and math.isfinite(run.tr):
        sources.append((f"sidecar of {run.bold_path.name}", run.tr))
    derived_tr = sidecar.get("RepetitionTime")
    if derived_tr is not None:
        sources.append((f"derivative sidecar of {image.path.name}", float(derived_tr)))
    tr = next((value for _, value in sources if math.isfinite(value)), math.nan)
    reference, reference_source = _slice_time(run, sidecar, tr, bids_root, fmriprep_version)
    return dataclasses.replace(
        run,
        bold_path=image.path,
        space=space,
        mask_path=mask_path,
        confounds_path=find_confounds(image.path),
        tr=tr,
        tr_sources=tuple(sources),
        slice_time_reference=reference,
        slice_time_source=reference_source,
    )


def _slice_time(
    run: RunSpec,
    sidecar: dict,
    tr: float,
    bids_root: Path,
    fmriprep_version: tuple[int, ...] | None,
) -> tuple[float, str]:
    """The derivative's slice-time reference (s) and its source (module docstring).

    With no TR yet (the header will give it), ``StartTime`` is checked against the TR later, by
    :func:`wav2brain.data.timing.first_sample_time`.
    """
    bound = tr if math.isfinite(tr) else math.inf
    if "SliceTimingCorrected" not in sidecar:
        times = read_sidecar(run.bold_path, bids_root).get("SliceTiming")
        if fmriprep_version is not None and fmriprep_version < _STC_VERSION and times:
            mean = sum(float(t) for t in times) / len(times)
            if 0.0 <= mean < bound:
                version = ".".join(str(v) for v in fmriprep_version)
                return mean, (
                    f"inferred: fMRIPrep {version} corrects slice timing to the mean slice time "
                    f"(AFNI 3dTshift default) of the raw SliceTiming, {mean:.3f} s"
                )
        if times and len({float(t) for t in times}) > 1:
            low, high = min(float(t) for t in times), max(float(t) for t in times)
            return math.nan, (
                f"unknown: the derivative of {run.bold_path.name} does not say whether it was "
                "slice-time corrected (no SliceTimingCorrected in its sidecar, and no fMRIPrep "
                f"older than 20.2 named by the derivatives' dataset_description.json) while the "
                f"raw SliceTiming spans {low:g}-{high:g} s; pass --slice-time-reference SECONDS "
                "(prepare_dataset(slice_time_reference=...)): 0 if it was not corrected, else "
                f"the time it was corrected to (fMRIPrep 20.2+: the middle, "
                f"{(low + high) / 2:g} s)"
            )
    try:
        return slice_time_reference(sidecar, bound)
    except ValueError as err:
        raise ValueError(f"{run.key}: derivative sidecar of {run.bold_path.name}: {err}") from None


def _fmriprep_version(root: Path) -> tuple[int, ...] | None:
    """fMRIPrep's version from a derivatives tree's ``dataset_description.json``, if it is one."""
    description = root / "dataset_description.json"
    if not description.is_file():
        return None
    try:
        meta = json.loads(description.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{description} is not valid JSON: {err}") from None
    tools = list(meta.get("GeneratedBy") or [])
    if "PipelineDescription" in meta:
        tools.append(meta["PipelineDescription"])
    for tool in tools:
        if str(tool.get("Name", "")).lower() == "fmriprep":
            numbers = re.findall(r"\d+", str(tool.get("Version", "")))
            return tuple(int(n) for n in numbers[:3]) or None
    return None


def _index(root: Path) -> list[_Derivative]:
    """Every derivative image and brain mask under ``root``'s ``sub-*/[ses-*/]func`` folders."""
    found = []
    for pattern in ("sub-*/func/*", "sub-*/ses-*/func/*"):
        for path in sorted(root.glob(pattern)):
            if is_junk(path.relative_to(root)):
                continue
            entities, suffix, extension = _parse(path.name)
            if "sub" not in entities:
                continue
            if extension in ("nii", "nii.gz") and suffix == "bold":
                kind = "volume"
            elif extension == "func.gii" and suffix in ("bold", "") and "hemi" in entities:
                if entities["hemi"] != "L":
                    continue
                kind = "surface"
            elif extension in ("nii", "nii.gz") and suffix == "mask":
                if entities.get("desc") != "brain":
                    continue
                kind = "mask"
            else:
                continue
            found.append(_Derivative(path, _key(entities), entities, kind))
    return found


def _parse(name: str) -> tuple[dict[str, str], str, str]:
    """Entities, suffix (``""`` when the name ends with an entity) and extension of a file name."""
    entities, suffix = parse_entities(name)
    match = _ENTITY.match(suffix)
    if match:
        entities[match.group(1)] = match.group(2)
        suffix = ""
    return entities, suffix, name.partition(".")[2].lower()


def _key(entities: dict[str, str | None]) -> tuple[tuple[str, str], ...]:
    """The run's identity: entities without derivative ones, index labels compared as numbers."""
    pairs = []
    for name, value in entities.items():
        if name in DERIVED_ENTITIES or value is None:
            continue
        value = str(value)
        if name in _NUMERIC_LABELS and value.isdigit():
            value = str(int(value))
        pairs.append((name, value))
    return tuple(sorted(pairs))


def _run_key(run: RunSpec) -> tuple[tuple[str, str], ...]:
    entities = _parse(run.bold_path.name)[0]
    for name, value in (
        ("sub", run.subject),
        ("ses", run.session),
        ("task", run.task),
        ("run", run.run),
        ("echo", run.echo),
    ):
        entities.pop(name, None)
        if value is not None:
            entities[name] = value
    return _key(entities)


def _in_space(item: _Derivative, space: str, desc: str, res: str | None) -> bool:
    entities = item.entities
    if entities.get("space") != space:
        return False
    if res is not None and res not in (entities.get("res"), entities.get("den")):
        return False
    own = entities.get("desc", "preproc" if item.kind == "surface" else None)
    return own == desc


def _missing_message(
    run: RunSpec,
    key: tuple,
    files: Sequence[_Derivative],
    root: Path,
    space: str,
    desc: str,
    res: str | None,
) -> str:
    mine = [f for f in files if f.key == key and f.kind != "mask"]
    wanted = f"space {space!r}, desc {desc!r}" + (f", res {res!r}" if res else "")
    if not mine:
        return (
            f"{run.key} ({run.bold_path}): no derivative of this run under {root} (looked for "
            f"{wanted} in sub-{run.subject}/[ses-*/]func)"
        )
    spaces = sorted({str(f.entities.get("space", "none")) for f in mine})
    descs = sorted({str(f.entities.get("desc", "none")) for f in mine})
    return (
        f"{run.key} ({run.bold_path}): no derivative in {wanted} under {root}; this run's "
        f"derivatives have spaces {spaces} and descs {descs}"
    )


def _check_orphans(
    images: Sequence[_Derivative],
    claimed: set[Path],
    runs: Sequence[RunSpec],
    bids_root: Path,
    space: str,
    desc: str,
) -> None:
    """Refuse derivatives (of the subjects prepared) whose run is not in the raw dataset at all.

    Runs left out by filters or exclusions still have a raw file, so their derivatives are not
    orphans.
    """
    subjects = {run.subject for run in runs}
    raw = {_key(_parse(p.name)[0]) for p in _raw_images(bids_root, subjects)}
    raw |= {_run_key(run) for run in runs}
    raw |= {tuple(pair for pair in key if pair[0] != "echo") for key in raw}  # combined echoes
    orphans = [
        str(f.path)
        for f in images
        if f.path not in claimed and dict(f.key).get("sub") in subjects and f.key not in raw
    ]
    if orphans:
        raise ValueError(
            f"derivatives in space {space!r} with desc {desc!r} have no raw run in {bids_root}: "
            f"{orphans}; is the derivatives folder from this dataset?"
        )


def _raw_images(bids_root: Path, subjects: Iterable[str]) -> list[Path]:
    files = []
    for subject in subjects:
        for pattern in (f"sub-{subject}/func/*", f"sub-{subject}/ses-*/func/*"):
            files.extend(
                p
                for p in bids_root.glob(pattern)
                if p.name.endswith(BOLD_SUFFIXES) and not is_junk(p.relative_to(bids_root))
            )
    return files
