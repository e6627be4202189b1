"""Thin entry point: `python scripts/walkthrough.py [--backend NAME] [--layer-norm]`."""
import sys

from xlstm.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["walkthrough", *sys.argv[1:]]))
