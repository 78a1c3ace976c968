"""A torchrun worker running several ``wav2brain`` command lines in turn (test helper).

``python -m torch.distributed.run --nproc_per_node 2 tests/shard_chain.py ARGV.json`` runs each
command line of the JSON list through :func:`wav2brain.cli.main`, as ``-m wav2brain`` would, in
one process group: the sharded steps of a chain pay the launch and the imports once.
"""

import json
import sys
from pathlib import Path

from wav2brain.cli import main

if __name__ == "__main__":
    for argv in json.loads(Path(sys.argv[1]).read_text()):
        status = main(argv)
        if status:
            sys.exit(status)
