"""customgrad's version (one place; the disk cache keys its entries with it)."""

__version__ = "0.1.0"
