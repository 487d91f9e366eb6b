"""atomdd: dataset distillation with attention mixing (ATOM), DataDAM and DM as one engine."""

__version__ = "0.1.0"
