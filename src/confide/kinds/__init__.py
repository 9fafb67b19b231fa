"""Confide's built-in kinds of job, one folder each (config, data reading, model, metrics and the task), every one
written on the public task API (:mod:`confide.api`), as a user's own task would be.

- :mod:`confide.kinds.brain_tumor`: 3D brain-tumour segmentation (``task.name: brain_tumor``);
- :mod:`confide.kinds.images`: image classification (``task.name: image_classification``), mammography included
  (MIAS read as simulated sites; ``task.name: mammo_density`` is a preset of this task);
- :mod:`confide.kinds.mil`: slide classification from tile features (``task.name: mil``);
- :mod:`confide.kinds.tables`: prediction on a clinical table split by hospital (``task.name: table``).

A kind's ``config`` module imports neither torch nor the kind's other modules, so reading a job stays cheap.
"""
