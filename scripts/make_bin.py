"""Thin wrapper: ``python scripts/make_bin.py ...`` runs ``python -m frtrain.tools.make_bin ...`` (see that module)."""

import sys

from frtrain.tools.make_bin import main

if __name__ == "__main__":
    sys.exit(main())
