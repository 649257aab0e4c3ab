"""The ``realuid`` command line: :mod:`~realuid.cli.app` builds it from the command modules.

``run`` (run, list-components, show), ``images`` (sample, eval), ``registry``
(registry list|add); ``common`` holds what they share.
"""

from realuid.cli.app import app, entry

__all__ = ["app", "entry"]
