"""The package version (one place; the package face and `spin info` read it)."""
__version__ = "0.1.0"
