"""Thin entry point: `python scripts/bench.py [--backend NAME] [--shapes tiny,medium,large] [--json FILE]`."""
import sys

from xlstm.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
