"""Image classification (``task.name: image_classification``): one folder of images per site with ``labels.csv``
(or the mini-MIAS folder), any label vocabulary, greyscale or colour, DICOM, PNG or JPEG of any size, a small CNN or
a MONAI network. Mammography (breast density, abnormality) is a configuration of it.

- ``config``: the job's task section (:class:`~confide.kinds.images.config.ImageTaskConfig`); imports no torch.
- ``labels``: reading and checking ``labels.csv`` (vocabulary, split, patients).
- ``pixels``: reading one image file as float pixels, converted to the job's channels and size.
- ``dataset``: :class:`~confide.kinds.images.dataset.ImageSet`, a site's images in memory.
- ``site``: one site's data (``read_site``), split as given or by patient.
- ``model``: the networks; ``augment``: training-time augmentation scaled to the image size.
- ``metrics``: accuracy, balanced accuracy, macro AUC, quadratic kappa.
- ``task``: the :class:`~confide.api.TaskKind` itself.
- ``synthetic``: generated colour images with five ordinal grades; ``medmnist``: a MedMNIST ``.npz`` as site folders.
- ``mias``: the mini-MIAS mammograms dealt by patient to simulated sites, each with its simulated acquisition
  (``mias_shift``); ``mammograms``: generated mammograms with a density label (tests, the privacy audit).
- ``presets``: ``task.name: mammo_density``, mammography as a configuration of this task (the job file reads it as
  that configuration).
"""
