"""Entry point; the benchmark is natstream._bench.packed, which `natstream bench` runs."""

import sys

from natstream._bench.packed import main

if __name__ == "__main__":
    main(sys.argv[1:])
