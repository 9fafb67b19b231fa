"""Clinical tables split by hospital (task.name table): binary, multiclass and survival."""
