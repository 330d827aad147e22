"""Thin wrapper: ``python scripts/align.py ...`` runs ``python -m frtrain.tools.align ...`` (see that module)."""

import sys

from frtrain.tools.align import main

if __name__ == "__main__":
    sys.exit(main())
