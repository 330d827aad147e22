"""Thin wrapper: ``python scripts/folder2wds.py ...`` runs ``python -m frtrain.tools.folder2wds ...`` (see that module)."""

import sys

from frtrain.tools.folder2wds import main

if __name__ == "__main__":
    sys.exit(main())
