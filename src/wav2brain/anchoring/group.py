"""Group level: couplings combined across subjects who heard the same stories.

Each subject's coupling of an AN with a target is a correlation over that subject's TRs; across
subjects the Fisher ``z = atanh(r)`` are combined by a one-sample t test (random effects: the
subjects are the sample, so the test asks whether the coupling holds in the population, not
only in these scans), with the share of subjects whose r has the group's sign (sign
consistency) and the share in whom the anchor replicates (significant at the subject's own FDR,
with the group's sign). Only subjects who heard the same stories are combined (their AN
responses are the same series); voxel-level maps further need one space and mask, else
combination happens at region or network level only, where targets are matched by name.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from wav2brain.anchoring.significance import bh_q

logger = logging.getLogger(__name__)

R_CLIP = 1 - 1e-7


def one_sample_t(z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, t and two-sided p of each column of ``z`` [subjects, tests] (df subjects - 1).

    A column with no spread gets t = 0 and p = 1 when its mean is 0, else the largest finite t.
    """
    from scipy import stats

    n = z.shape[0]
    if n < 2:
        raise ValueError(f"a group test needs at least two subjects, got {n}")
    mean = z.mean(0)
    sd = z.std(0, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(
            sd > 0, mean / (sd / np.sqrt(n)), np.where(mean == 0, 0.0, np.sign(mean) * 1e12)
        )
    return mean, t, 2 * stats.t.sf(np.abs(t), df=n - 1)


def combine(r: np.ndarray, q: np.ndarray, alpha: float) -> dict[str, np.ndarray]:
    """Group statistics of couplings r [subjects, tests] with the subjects' own q-values."""
    z = np.arctanh(np.clip(r, -R_CLIP, R_CLIP))
    mean, t, p = one_sample_t(z)
    sign = np.sign(mean)
    same = np.sign(r) == sign
    return {
        "group_r": np.tanh(mean).astype(np.float32),
        "group_t": t.astype(np.float32),
        "group_p": p,
        "group_q": bh_q(p),
        "sign_consistency": same.mean(0).astype(np.float32),
        "replication": ((q <= alpha) & same).mean(0).astype(np.float32),
        "n_subjects": np.full(r.shape[1], r.shape[0], dtype=np.int32),
    }


def story_groups(stories: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Subjects by the set of stories they heard, largest set first."""
    groups: dict[tuple, list[str]] = {}
    for subject, own in stories.items():
        groups.setdefault(tuple(sorted(set(own))), []).append(subject)
    return sorted(groups.values(), key=len, reverse=True)


def group_subjects(stories: Mapping[str, Sequence[str]]) -> list[str]:
    """The subjects combined: the largest group sharing one story set (others logged)."""
    groups = story_groups(stories)
    if not groups:
        return []
    for other in groups[1:]:
        logger.warning(
            "subjects %s heard other stories than %s: left out of the group statistics",
            other,
            groups[0],
        )
    return groups[0]


def group_regions(regions, subjects: Sequence[str], alpha: float):
    """Group statistics of every AN x region test of every family (pandas).

    ``regions`` is the per-subject ``regions.parquet`` table; tests are matched by family,
    layer, unit and region name.
    """
    import pandas as pd

    keys = ["family", "kind", "layer", "unit", "region"]
    part = regions[regions["subject"].isin(subjects) & regions["valid"]]
    wide_r = part.pivot_table(index=keys, columns="subject", values="r", observed=True)
    wide_q = part.pivot_table(index=keys, columns="subject", values="q", observed=True)
    complete = wide_r.notna().all(axis=1) & wide_q.notna().all(axis=1)
    wide_r, wide_q = wide_r[complete], wide_q[complete]
    frames = []
    for _family, rows in wide_r.groupby(level="family", sort=False):
        stats = combine(rows.to_numpy().T, wide_q.loc[rows.index].to_numpy().T, alpha)
        frame = rows.index.to_frame(index=False)
        for name, values in stats.items():
            frame[name] = values
        frames.append(frame)
    if not frames:
        return pd.DataFrame(columns=[*keys, "group_r", "group_t", "group_p", "group_q"])
    return pd.concat(frames, ignore_index=True)


def best_regions(group):
    """Per AN and family its region with the largest group effect ``|group_r|`` (pandas).

    The effect (the mean Fisher z, back-transformed), not ``|t|``: with a handful of subjects
    t is dominated by the accident of a small spread; the region's significance is its
    ``group_q``.
    """
    index = (
        group.assign(effect=group["group_r"].abs())
        .groupby(["family", "layer", "unit"], sort=False)["effect"]
        .idxmax()
    )
    return group.loc[index.to_numpy()].reset_index(drop=True)
