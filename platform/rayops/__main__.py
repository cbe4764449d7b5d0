"""``python -m rayops``: the command line (what a submitted job runs)."""

from rayops.cli import main

if __name__ == "__main__":
    main()
