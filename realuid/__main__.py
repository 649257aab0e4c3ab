"""``python -m realuid``: the same command line as the ``realuid`` script."""

from realuid.cli import entry

if __name__ == "__main__":
    entry()
