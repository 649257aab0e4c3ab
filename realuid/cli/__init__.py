"""The ``realuid`` command line."""

from realuid.cli.app import app, entry

__all__ = ["app", "entry"]
