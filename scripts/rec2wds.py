"""Thin wrapper: ``python scripts/rec2wds.py ...`` runs ``python -m frtrain.tools.rec2wds ...`` (see that module)."""

import sys

from frtrain.tools.rec2wds import main

if __name__ == "__main__":
    sys.exit(main())
