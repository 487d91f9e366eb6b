"""Readers for the registered datasets (being written)."""
