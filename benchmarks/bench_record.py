"""Entry point; the benchmark is natstream._bench.record, which `natstream bench` runs."""

import sys

from natstream._bench.record import main

if __name__ == "__main__":
    main(sys.argv[1:])
