"""Clinical tables split by hospital (task.name table): binary, multiclass and survival, written on the public task
API (task.py)."""
