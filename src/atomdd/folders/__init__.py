"""The on-disk contract of results: what a run, set, evaluation or grid folder holds (`layout`), the
one writer of a distillation run (`run`), evaluation results kept and merged (`evals`), and
folders read back (`read`). No presentation here, and no torch at import."""
