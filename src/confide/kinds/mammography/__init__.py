"""Mammography (task.name mammo_density): breast density and abnormality from DICOM, PNG and PGM films."""
