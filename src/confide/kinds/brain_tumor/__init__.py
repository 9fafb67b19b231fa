"""3D brain-tumour segmentation from multi-modal MRI (task.name brain_tumor), on the public task API."""
