"""``python -m ghostmap``: the same command line as ``ghostmap``."""

from .cli import main

if __name__ == "__main__":
    main()
