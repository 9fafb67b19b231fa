"""Image classification (``task.name: image_classification``): one folder of images per site with ``labels.csv``,
any label vocabulary, greyscale or colour, DICOM, PNG or JPEG of any size, a small CNN or a MONAI network.

- ``config``: the job's task section (:class:`~confide.kinds.images.config.ImageTaskConfig`); imports no torch.
- ``labels``: reading and checking ``labels.csv`` (vocabulary, split, patients).
- ``pixels``: reading one image file as float pixels, converted to the job's channels and size.
- ``dataset``: :class:`~confide.kinds.images.dataset.ImageSet`, a site's images in memory.
- ``site``: one site's data (``read_site``), split as given or by patient.
- ``model``: the networks; ``augment``: training-time augmentation scaled to the image size.
- ``metrics``: accuracy, balanced accuracy, macro AUC, quadratic kappa.
- ``task``: the :class:`~confide.api.TaskKind` itself.
- ``synthetic``: generated colour images with five ordinal grades; ``medmnist``: a MedMNIST ``.npz`` as site folders.
"""
