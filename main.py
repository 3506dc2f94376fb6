"""LayerScope entry point: `python main.py` builds the embedded default run if needed and serves
the dashboard; `python main.py precompute|runs|serve ...` are the other commands."""

import sys

from pipelines.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
