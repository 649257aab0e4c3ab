from realuid.cli import entry

entry()
