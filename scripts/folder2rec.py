"""Thin wrapper: ``python scripts/folder2rec.py ...`` runs ``python -m frtrain.tools.folder2rec ...`` (see that module)."""

import sys

from frtrain.tools.folder2rec import main

if __name__ == "__main__":
    sys.exit(main())
