"""Printers from SymPy expressions to source code (torch now; Triton later)."""
