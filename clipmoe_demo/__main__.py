import sys

from .cli import main

if __name__ == "__main__":  # a spawned worker (the chain answers in two) imports this module again
    sys.exit(main())
