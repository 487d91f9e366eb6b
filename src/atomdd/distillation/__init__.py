"""Distillation in two layers: `step` (one pure step over a range of classes: the network from
(seed, step), the real batch, the augmentation draw, the loss and the pixel gradient) and `driver`
(the state of a run, its step and loop, checkpoints; its files through `folders.run`). `config`
holds the settings and the published presets, and imports no torch, so the CLI can build its flags
without it; `shards` splits the classes over torchrun's ranks.

Nothing here draws or shows: the figures and TensorBoard plug in through the driver's hooks, from
`atomdd.api.distill` (what `atomdd.distill` is). tests/test_structure.py holds that.
"""
