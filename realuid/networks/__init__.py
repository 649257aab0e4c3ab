"""Network backbones: ``forward(x, t, cond=None)``; they know nothing of the path."""
