"""LayerScope entry point: `python main.py` builds the embedded default run if needed and serves
the dashboard; `python main.py precompute|runs|serve ...` are the other commands."""

import sys

if __name__ == "__main__":
    # Imported here, not at the top: the precompute's worker processes start by importing this
    # file, and they need none of what the CLI imports (torch, torchvision, dash).
    from cli import main

    sys.exit(main(sys.argv[1:]))
