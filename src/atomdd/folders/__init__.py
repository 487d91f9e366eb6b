"""The on-disk contract of results: what a run, set or evaluation folder holds (`layout`), a
distillation run's files (`run`), evaluation results (`evals`), folders read back (`read`)."""
