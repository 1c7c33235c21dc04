"""``python -m tune.recipes`` is the ``tune`` command (torchrun launches ranks this way)."""

import logging
import os
import sys

from tune.recipes.cli import main

if __name__ == "__main__":
    status = main()
    if "TORCHELASTIC_RUN_ID" in os.environ:  # a rank started by torchrun (`tune run --nproc...`)
        # The run has finished and destroyed its process group. torch 2.13's gloo sometimes
        # aborts a rank while the interpreter tears down ("terminate called without an active
        # exception"), turning a finished run into a failed one; leave without that teardown.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
