"""Entry point; the benchmark is natstream._bench.memory, which `natstream bench` runs."""

import sys

from natstream._bench.memory import main

if __name__ == "__main__":
    main(sys.argv[1:])
