"""Fabricated prepared datasets and feature caches for the encoding tests (SIMULATED).

Each story has planted features (``layer_01``) and noise features (``layer_02``); the first
``n_driven`` voxels of every run carry ``planted @ weights`` (the same weights for every subject,
so repeats and other subjects share the signal), the rest is noise.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

TR = 1.5
UNITS = 6


def mask_image(n_voxels: int) -> nib.Nifti1Image:
    """A 1-voxel-thick slab mask with ``n_voxels`` voxels."""
    data = np.zeros((n_voxels + 2, 3, 3), dtype=np.uint8)
    data[1 : n_voxels + 1, 1, 1] = 1
    return nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0]))


def fixture_key(story: str, tr: float):
    """The cache key of a fabricated feature entry of ``story`` on a grid of TR ``tr`` (s)."""
    from wav2brain.features.cache import FeatureKey
    from wav2brain.features.resample import TRGridConfig

    return FeatureKey(
        model={"name": "fixture"},
        stimulus_id=story,
        audio_sha256=story,
        extraction={},
        grid_config=TRGridConfig().to_dict(),
        tr_s=tr,
        phase_s=0.0,
        frame_rate_hz=50.0,
    )


def write_prepared(
    root: Path,
    runs: list[dict],
    n_voxels: int = 24,
    n_trs: int = 60,
    n_driven: int = 12,
    gain: float = 2.0,
    seed: int = 0,
    mask: str | None = "mask.nii.gz",
    space: str = "native",
) -> tuple[Path, Path]:
    """Write ``root/dataset`` (responses shards, card, mask) and ``root/cache``.

    ``runs`` are dicts with ``subject`` and ``story``, optionally ``run``, ``onset`` (s),
    ``n_trs``, ``n_voxels`` and ``mask`` (overriding the defaults per run).
    """
    from wav2brain.data.hf_layout import response_table, write_shard
    from wav2brain.features.cache import FeatureCache
    from wav2brain.features.resample import TRGrid

    rng = np.random.default_rng(seed)
    dataset, cache_dir = root / "dataset", root / "cache"
    dataset.mkdir(parents=True)
    (dataset / "README.md").write_text(
        "---\nconfigs:\n- config_name: responses\n  data_files:\n  - split: train\n"
        "    path: responses/*.parquet\n---\n# fixture (SIMULATED)\n"
    )
    masks = {run.get("mask", mask) for run in runs} - {None}
    for name in masks:
        (dataset / name).parent.mkdir(parents=True, exist_ok=True)
        width = next(r.get("n_voxels", n_voxels) for r in runs if r.get("mask", mask) == name)
        nib.save(mask_image(width), dataset / name)
    weights = rng.standard_normal((UNITS, n_driven))
    cache, rows, entries = FeatureCache(cache_dir), [], {}
    stories = list(dict.fromkeys(run["story"] for run in runs))
    longest = {s: max(r.get("n_trs", n_trs) for r in runs if r["story"] == s) for s in stories}
    for story in stories:
        n_rows = longest[story] + 10
        planted = rng.standard_normal((n_rows, UNITS)).astype(np.float32)
        key = fixture_key(story, TR)
        noise = rng.standard_normal((n_rows, UNITS)).astype(np.float32)
        entries[story] = (
            cache.put(key, TRGrid(TR, 0.0, n_rows), {"layer_01": planted, "layer_02": noise}),
            planted,
        )
    for index, run in enumerate(runs):
        entry, planted = entries[run["story"]]
        length, width = run.get("n_trs", n_trs), run.get("n_voxels", n_voxels)
        onset = float(run.get("onset", 0.0))
        offset = int(round(-onset / TR))
        signal = np.zeros((length, n_driven))
        inside = slice(max(0, offset), min(len(planted), offset + length))
        signal[inside.start - offset : inside.stop - offset] = planted[inside] @ weights
        bold = rng.standard_normal((length, width)).astype(np.float32)
        bold[:, :n_driven] += gain * signal / np.sqrt(UNITS)
        meta = dict(
            subject=run["subject"],
            session=None,
            task=run["story"],
            run=run.get("run"),
            stimulus_id=run["story"],
            onset=onset,
            tr=TR,
            space=space,
            mask=run.get("mask", mask),
        )
        write_shard(
            response_table(meta, bold, np.asarray(run.get("dropped", []), int)),
            dataset / "responses" / f"{index:03d}_sub-{run['subject']}_{run['story']}.parquet",
        )
        rows.append(
            dict(
                subject=run["subject"],
                session=None,
                task=run["story"],
                run=run.get("run"),
                stimulus_id=run["story"],
                onset=onset,
                tr=TR,
                n_trs=length,
                path=str(entry.path.relative_to(cache_dir)),
                row_offset=offset,
            )
        )
    pd.DataFrame(rows).to_parquet(cache_dir / "runs.parquet")
    return dataset, cache_dir


def design(subjects, stories, repeats: int = 1, **extra) -> list[dict]:
    """Every subject hears every story ``repeats`` times (runs numbered from 1)."""
    return [
        {"subject": s, "story": story, "run": str(k + 1), **extra}
        for s in subjects
        for story in stories
        for k in range(repeats)
    ]
