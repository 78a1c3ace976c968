"""Neuron-level anchoring: every artificial neuron of a speech model against every voxel and brain network.

- :func:`anchor` (:mod:`.dataset`): a prepared dataset and its feature cache to tables and maps;
- :func:`couple` (:mod:`.coupling`): the blocked coupling of one subject's ANs and targets, with
  autocorrelation-aware analytic p-values, circular-shift nulls, BH-FDR and max-statistic FWER
  (:mod:`.significance`);
- :mod:`.group` (subjects combined), :mod:`.profile` (the intermediate stage over layers) and
  :func:`compare_anchoring` (:mod:`.compare`: before and after brain refinement).
"""

from wav2brain.anchoring.compare import compare_anchoring, write_comparison
from wav2brain.anchoring.coupling import Coupling, CouplingConfig, couple
from wav2brain.anchoring.dataset import AnchorConfig, AnchorResult, anchor
from wav2brain.anchoring.targets import Timecourses

__all__ = [
    "AnchorConfig",
    "AnchorResult",
    "Coupling",
    "CouplingConfig",
    "Timecourses",
    "anchor",
    "compare_anchoring",
    "couple",
    "write_comparison",
]
