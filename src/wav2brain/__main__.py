"""``python -m wav2brain``: the console script, so launchers can start it as a module.

``torchrun --nproc_per_node N -m wav2brain extract ...`` and ``accelerate launch -m wav2brain ...``
run the sharded commands on N processes (:mod:`wav2brain.distributed`).
"""

import sys

from wav2brain.cli import main

if __name__ == "__main__":
    sys.exit(main())
