"""Distillation in two layers: `step` (one pure step over a range of classes: the network from
(seed, step), the real batch, the augmentation draw, the loss and the pixel gradient) and `driver`
(the state of a run, its checkpoints, its log, its folder). `config` holds the settings and the
published presets, and imports no torch, so the CLI can build its flags without it.

`atomdd.distill(...)` (the package root) is `driver.distill`.
"""
