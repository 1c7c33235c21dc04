"""``python -m tune.recipes`` is the ``tune`` command (torchrun launches ranks this way)."""

import sys

from tune.recipes.cli import main

if __name__ == "__main__":
    sys.exit(main())
