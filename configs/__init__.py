"""Hydra configs of frtrain (a package so that installed entry points find them)."""
