"""Workloads: what a kind of job (brain tumours, mammography, clinical tables, histopathology) brings to the
experiment: how its sites' data are read and split, its model, its site task and its metrics."""
