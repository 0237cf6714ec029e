"""Entry point; the benchmark is natstream._bench.writer, which `natstream bench` runs."""

import sys

from natstream._bench.writer import main

if __name__ == "__main__":
    main(sys.argv[1:])
