"""Slide-level classification from bags of tile features (task.name mil), on the public task API."""
