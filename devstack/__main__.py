"""`python -m devstack run`: the local suite (what `make run` calls)."""

import argparse

from devstack import run


def main() -> None:
    """Dispatches the sub-command."""
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    parser.add_argument("command", choices=["run"], help="run: the whole suite in the foreground")
    parser.parse_args()
    run.main()


if __name__ == "__main__":
    main()
