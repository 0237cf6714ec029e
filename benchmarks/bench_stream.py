"""Entry point; the benchmark is natstream._bench.stream, which `natstream bench` runs."""

import sys

from natstream._bench.stream import main

if __name__ == "__main__":
    main(sys.argv[1:])
