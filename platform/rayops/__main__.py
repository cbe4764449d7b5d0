"""``python -m rayops``: the command line (what a submitted job runs)."""

from rayops.cli import console

if __name__ == "__main__":
    console()
