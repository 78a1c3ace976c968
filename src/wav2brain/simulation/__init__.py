"""The simulated study: real (espeak-ng) speech, a seeded tiny model, planted voxels, BIDS files,
ground truth, and the check that an analysis recovers what was planted (SIMULATED data only).

Above :mod:`wav2brain.data` and :mod:`wav2brain.features` in the import order: it uses both, and
neither uses it.
"""

from wav2brain.simulation.configuration import ClusterSpec as ClusterSpec
from wav2brain.simulation.configuration import PlantedUnit as PlantedUnit
from wav2brain.simulation.configuration import SimulationConfig as SimulationConfig
from wav2brain.simulation.configuration import tiny_model_kwargs as tiny_model_kwargs
from wav2brain.simulation.dataset import simulate_dataset as simulate_dataset
from wav2brain.simulation.files import GROUND_TRUTH_DIR as GROUND_TRUTH_DIR
