"""Thin wrapper: ``python scripts/rec2folder.py ...`` runs ``python -m frtrain.tools.rec2folder ...`` (see that module)."""

import sys

from frtrain.tools.rec2folder import main

if __name__ == "__main__":
    sys.exit(main())
