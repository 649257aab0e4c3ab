"""Trained models: the registry of manifests (``registry/*.toml``) and loading a trained run."""
