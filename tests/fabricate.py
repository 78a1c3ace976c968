"""Fabricate stand-in binaries for the real dataset layouts in ``tests/data``.

The folders under ``tests/data`` hold the real metadata (events, sidecars, respdict) of Narratives (ds002345)
and LeBel (ds003020) and a ``MANIFEST.tsv`` of the binaries they lack. :func:`fabricate_layout`
copies a layout (writable) and writes a small stand-in at each manifest path, with the durations
the metadata implies:

* WAVs from the first events row naming them to the story's end (Narratives' files hold the
  music lead-in; LeBel: ``respdict * TR - 20`` s, the sound starting 10 s into a scan that ends
  10 s after it), at low, mixed sample rates and channel
  counts (1 kHz mono int16, 1.2 kHz stereo int16, 800 Hz mono float) so they stay small;
* NIfTIs on a small grid with as many volumes as ``onset + duration`` need at the sidecar TR
  (LeBel stories: ``respdict`` volumes), header TR = sidecar TR;
* LeBel ``.hf5`` ``data`` float64 arrays of shape (respdict - 20, n_voxels), the held-out story
  as [repeats, TRs, voxels] as ``DERIVED_SHAPES.tsv`` infers;
* TextGrids (tier 0 phones, tier 1 words) alternating long and short text format, the first one
  with one overlapping phone interval as in the real data;
* junk (``._.DS_Store``) as random bytes that would break any reader.
"""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np

from wav2brain.data.bids import find_events, parse_entities, read_sidecar

AUDIO_FORMATS = ((1000, 1, "PCM_16"), (1200, 2, "PCM_16"), (800, 1, "FLOAT"))
"""(sampling rate Hz, channels, subtype) cycled over the fabricated WAVs."""

LEBEL_SOUND_START = 10.0
"""Seconds between LeBel's first volume and the story's first sample."""


def copy_layout(source: Path, dest: Path) -> Path:
    """Copy a layout's text files into ``dest`` with writable permissions (the source is read-only)."""
    for path in sorted(Path(source).rglob("*")):
        target = dest / path.relative_to(source)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    return dest


def fabricate_layout(
    source: Path,
    dest: Path,
    grid: tuple[int, int, int] = (4, 4, 3),
    n_voxels: int = 12,
    seed: int = 0,
) -> Path:
    """Copy ``source`` to ``dest`` and write a stand-in for every ``MANIFEST.tsv`` binary.

    Parameters
    ----------
    source, dest : Path
        Real layout folder (``.../ds002345``) and destination (created).
    grid : tuple of int
        NIfTI voxel grid.
    n_voxels : int
        Columns of the fabricated ``.hf5`` responses.
    seed : int
        Random seed of the fabricated signals.
    """
    copy_layout(source, dest)
    rng = np.random.default_rng(seed)
    layout = _Layout(dest)
    with open(dest / "MANIFEST.tsv", newline="") as stream:
        rows = list(csv.DictReader(stream, delimiter="\t"))
    wav_index = textgrid_index = 0
    for row in rows:
        rel = row["path"]
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        name = path.name
        if name.startswith("._") or name == ".DS_Store":
            path.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
        elif name.endswith(".wav"):
            rate, channels, subtype = AUDIO_FORMATS[wav_index % len(AUDIO_FORMATS)]
            write_wav(path, layout.stimulus_duration(path), rate, channels, subtype, rng)
            wav_index += 1
        elif name.endswith("_bold.nii.gz"):
            tr = layout.tr(path)
            write_nifti(path, layout.n_volumes(path, tr), tr, grid, rng)
        elif name.endswith(".nii.gz"):
            write_nifti(path, None, None, grid, rng)
        elif name.endswith(".TextGrid"):
            stem = name.split(".")[0]
            write_textgrid(
                path,
                layout.lebel_wav_duration(stem),
                short=textgrid_index % 2 == 1,
                overlap=textgrid_index == 0,
            )
            textgrid_index += 1
        elif name.endswith(".hf5"):
            write_hf5(path, layout.hf5_shape(rel, n_voxels), rng)
        else:
            path.write_bytes(b"\0" * 16)
    return dest


def write_wav(path: Path, duration: float, rate: int, channels: int, subtype: str, rng) -> None:
    """A quiet tone plus noise, ``duration`` seconds long."""
    import soundfile as sf

    n = int(round(duration * rate))
    t = np.arange(n) / rate
    wave = 0.3 * np.sin(2 * np.pi * 110.0 * t) + 0.01 * rng.standard_normal(n)
    data = np.repeat(wave[:, None], channels, axis=1).astype(np.float32)
    sf.write(str(path), data, rate, subtype=subtype)


def write_nifti(path: Path, n_volumes: int | None, tr: float | None, grid, rng) -> None:
    """A 4D float32 image with header TR (or a 3D image when ``n_volumes`` is None)."""
    import nibabel as nib

    affine = np.diag([3.0, 3.0, 4.0, 1.0])
    shape = tuple(grid) + ((n_volumes,) if n_volumes is not None else ())
    data = (100.0 + rng.standard_normal(shape)).astype(np.float32)
    img = nib.Nifti1Image(data, affine)
    if n_volumes is not None:
        img.header.set_zooms((3.0, 3.0, 4.0, float(tr)))
        img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))


def write_hf5(path: Path, shape: tuple[int, ...], rng) -> None:
    """An HDF5 file with a float64 ``data`` array, as LeBel's preprocessed responses."""
    import h5py

    with h5py.File(path, "w") as handle:
        handle.create_dataset("data", data=rng.standard_normal(shape))


def write_textgrid(path: Path, duration: float, short: bool, overlap: bool) -> None:
    """Praat TextGrid with tier 0 ``phone`` and tier 1 ``word`` covering ``duration`` s.

    Words last 0.5 s with 0.1 s of silence between; each word has two phones. With ``overlap``
    the second phone of the first word ends 0.05 s after the next phone starts.
    """
    words, phones = [], []
    start, index = 0.1, 0
    while start + 0.5 < duration:
        words.append((start, start + 0.5, f"word{index}"))
        phones.append((start, start + 0.2, "AH"))
        phones.append((start + 0.2, start + 0.5, "T"))
        start += 0.6
        index += 1
    if overlap and len(phones) > 2:
        first = phones[1]
        phones[1] = (first[0], phones[2][0] + 0.05, first[2])
    tiers = [("phone", _with_silences(phones, duration)), ("word", _with_silences(words, duration))]
    path.write_text(_textgrid_text(tiers, duration, short))


def _with_silences(intervals, duration):
    filled, cursor = [], 0.0
    for start, end, label in intervals:
        if start > cursor + 1e-9:
            filled.append((cursor, start, ""))
        filled.append((start, end, label))
        cursor = end
    if cursor < duration:
        filled.append((cursor, duration, "sp"))
    return filled


def _textgrid_text(tiers, duration: float, short: bool) -> str:
    if short:
        lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "0", f"{duration}"]
        lines += ["<exists>", str(len(tiers))]
        for name, intervals in tiers:
            lines += ['"IntervalTier"', f'"{name}"', "0", f"{duration}", str(len(intervals))]
            for start, end, label in intervals:
                lines += [f"{start:.4f}", f"{end:.4f}", f'"{label}"']
        return "\n".join(lines) + "\n"
    lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "xmin = 0 "]
    lines += [f"xmax = {duration} ", "tiers? <exists> ", f"size = {len(tiers)} ", "item []: "]
    for number, (name, intervals) in enumerate(tiers, start=1):
        lines += [f"    item [{number}]:", '        class = "IntervalTier" ']
        lines += [f'        name = "{name}" ', "        xmin = 0 ", f"        xmax = {duration} "]
        lines += [f"        intervals: size = {len(intervals)} "]
        for k, (start, end, label) in enumerate(intervals, start=1):
            lines += [f"        intervals [{k}]:", f"            xmin = {start:.4f} "]
            lines += [f"            xmax = {end:.4f} ", f'            text = "{label}" ']
    return "\n".join(lines) + "\n"


class _Layout:
    """Durations and shapes implied by a layout's metadata."""

    def __init__(self, root: Path) -> None:
        self.root = root
        respdict = root / "derivative" / "respdict.json"
        self.respdict = json.loads(respdict.read_text()) if respdict.exists() else {}
        self.story_durations: dict[str, float] = {}
        for events in sorted(root.glob("sub-*/**/*_events.tsv")):
            rows = _rows(events)
            for story in (r for r in rows if r.get("trial_type") == "story" and r["stim_file"]):
                start = min(float(r["onset"]) for r in rows if r["stim_file"] == story["stim_file"])
                end = float(story["onset"]) + float(story["duration"]) - start
                name = story["stim_file"]
                self.story_durations[name] = max(end, self.story_durations.get(name, 0.0))

    def tr(self, bold_path: Path) -> float:
        return float(read_sidecar(bold_path, self.root)["RepetitionTime"])

    def lebel_wav_duration(self, story: str) -> float:
        return self.respdict[story] * self._task_tr(story) - 2 * LEBEL_SOUND_START

    def stimulus_duration(self, wav: Path) -> float:
        if wav.name in self.story_durations:
            return self.story_durations[wav.name]
        return self.lebel_wav_duration(wav.stem)

    def n_volumes(self, bold_path: Path, tr: float) -> int:
        task = parse_entities(bold_path.name)[0]["task"]
        if task in self.respdict:
            return int(self.respdict[task])
        events = find_events(bold_path, self.root)
        ends = [float(r["onset"]) + float(r["duration"]) for r in _rows(events)] if events else []
        return max(10, math.ceil(max(ends, default=0.0) / tr - 1e-9))

    def hf5_shape(self, rel: str, n_voxels: int) -> tuple[int, ...]:
        story = Path(rel).stem
        if story not in self.respdict:
            return (10, n_voxels)
        trs = self.respdict[story] - 20
        repeats = self._repeats(rel)
        return (repeats, trs, n_voxels) if repeats > 1 else (trs, n_voxels)

    def _repeats(self, rel: str) -> int:
        shapes = self.root / "DERIVED_SHAPES.tsv"
        if not shapes.exists():
            return 1
        with open(shapes, newline="") as stream:
            for row in csv.DictReader(stream, delimiter="\t"):
                match = re.match(r"(\d+)\*(\d+) rows", row["inferred_shape"])
                if row["path"] == rel and match:
                    return int(match.group(1))
        return 1

    def _task_tr(self, task: str) -> float:
        sidecar = self.root / f"task-{task}_bold.json"
        return float(json.loads(sidecar.read_text())["RepetitionTime"])


def _rows(events: Path) -> list[dict]:
    with open(events, newline="") as stream:
        return list(csv.DictReader(stream, delimiter="\t"))


def lebel_mapping(root: Path, preprocessed: bool = False) -> Path:
    """Write a mapping table for the LeBel story runs of a fabricated layout.

    Raw scans: the sound starts ``LEBEL_SOUND_START`` s after the first volume and the TR comes
    from the sidecars (no ``tr`` column). Preprocessed ``.hf5``: row 0 is scan TR 10 (LeBel's
    features are trimmed ``[5 + 5 : -5]`` on a grid of respdict - 5 TRs starting at the sound
    start - 10 s), so the sound starts 10 s *before* row 0: onset -10 s; the TR column is needed.
    """
    rows = []
    for bold in sorted(root.glob("sub-*/ses-*/func/*_bold.nii.gz")):
        entities = parse_entities(bold.name)[0]
        story = entities["task"]
        if not (root / "stimuli" / f"{story}.wav").exists():
            continue
        subject = entities["sub"]
        if preprocessed:
            array = Path("derivative") / "preprocessed_data" / subject / f"{story}.hf5"
            row = [subject, story, "", str(array), f"{story}.wav", "-10.0", "2.0"]
        else:
            row = [subject, story, entities.get("run", ""), str(bold.relative_to(root))]
            row += [f"{story}.wav", str(LEBEL_SOUND_START), ""]
        rows.append([entities.get("ses", "")] + row)
    path = root / ("mapping_preprocessed.tsv" if preprocessed else "mapping.tsv")
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream, delimiter="\t")
        writer.writerow(["session", "subject", "task", "run", "bold", "stimulus", "onset", "tr"])
        writer.writerows(rows)
    return path
