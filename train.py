"""Brain refinement of wav2vec 2.0: ``accelerate launch train.py --config hf_configs/<recipe>.yaml``.

Also ``python train.py ...``; every recipe key is an option (``--key value``, which wins over the
YAML). The logic lives in :mod:`wav2brain.training`.
"""

import sys

from wav2brain.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
