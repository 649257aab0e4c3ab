"""Teachers: frozen matching fields f* to distil (exact Gaussian-mixture fields, trained checkpoints)."""
