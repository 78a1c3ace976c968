"""Reading what the simulator planted: the (unit, voxel) pairs an anchoring analysis must find."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from wav2brain.simulation.files import PLANTED_PAIR_COLUMNS, PLANTED_PAIRS_FILE

if TYPE_CHECKING:
    import pandas as pd

PAIR_COLUMNS = ("layer", "tensor", "unit", "voxel", "cluster")
"""Columns of :func:`planted_pairs`."""


def planted_pairs(truth_dir: str | Path) -> pd.DataFrame:
    """Every planted artificial-neuron → voxel pair of a simulated dataset (SIMULATED).

    Parameters
    ----------
    truth_dir : str or Path
        The ground-truth folder (``<bids>/derivatives/ground_truth``,
        :data:`wav2brain.simulation.GROUND_TRUTH_DIR` under the dataset root).

    Returns
    -------
    pandas.DataFrame
        One row per pair, sorted by (tensor, layer, unit, voxel), with columns ``layer`` (int:
        the ``hidden_states`` index, 0 = transformer input; for ``attention_output`` and
        ``ffn_intermediate`` the 1-based transformer layer, as :mod:`wav2brain.features.taps`
        numbers them), ``tensor`` (str, one of :data:`wav2brain.features.taps.TENSORS`),
        ``unit`` (int), ``voxel`` (int: index in the brain mask's C order, which is the column
        of each subject's prepared ``responses`` when prepared with ``--mask
        <truth_dir>/brain_mask.nii.gz``; the same for every simulated subject) and ``cluster``
        (str). A voxel of a cluster driven by two units appears in two rows.

    Raises
    ------
    FileNotFoundError
        ``truth_dir`` holds no ``planted_pairs.tsv`` (not a simulated dataset, or one written
        by a wav2brain older than this table).
    ValueError
        The table lacks a column or holds a tensor outside ``TENSORS``.
    """
    import pandas as pd

    from wav2brain.features.taps import TENSORS

    path = Path(truth_dir) / PLANTED_PAIRS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: expected the ground truth folder of a dataset written by "
            "`wav2brain simulate` (<bids>/derivatives/ground_truth)"
        )
    table = pd.read_csv(path, sep="\t")
    if missing := [column for column in PLANTED_PAIR_COLUMNS if column not in table.columns]:
        raise ValueError(
            f"{path}: missing columns {missing}; expected {list(PLANTED_PAIR_COLUMNS)}"
        )
    if bad := sorted(set(table["tensor"]) - set(TENSORS)):
        raise ValueError(f"{path}: tensor values {bad} are not among {TENSORS}")
    pairs = table[list(PAIR_COLUMNS)].astype(
        {"layer": "int64", "tensor": "str", "unit": "int64", "voxel": "int64", "cluster": "str"}
    )
    return pairs.sort_values(["tensor", "layer", "unit", "voxel"], ignore_index=True)


def ground_truth_folder(bids_root: str | Path | None) -> Path | None:
    """The simulator's ground-truth folder of a BIDS root (``derivatives/ground_truth`` holding
    its ``simulation.json``), or None: a real dataset, or no root."""
    from wav2brain.simulation.files import GROUND_TRUTH_DIR

    if bids_root is None:
        return None
    truth = Path(bids_root) / GROUND_TRUTH_DIR
    return truth if (truth / "simulation.json").is_file() else None


def is_simulated(prepared: str | Path) -> bool:
    """Whether a prepared dataset folder was made from a simulated BIDS dataset.

    True when the BIDS root recorded by ``wav2brain prepare`` (``wav2brain_prepare.json``) still
    holds the simulator's ground truth (:func:`ground_truth_folder`); False otherwise, also when
    the BIDS root has moved (the label SIMULATED is then not claimed).
    """
    from wav2brain.data.prepare import prepared_bids_root

    return ground_truth_folder(prepared_bids_root(prepared)) is not None
