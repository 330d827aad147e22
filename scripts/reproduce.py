"""Thin wrapper: ``python scripts/reproduce.py ...`` runs ``python -m frtrain.tools.reproduce ...`` (see that module)."""

from frtrain.tools.reproduce import main

if __name__ == "__main__":
    main()
