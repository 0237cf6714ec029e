"""Entry point; the benchmark is natstream._bench.durable, which `natstream bench` runs."""

import sys

from natstream._bench.durable import main

if __name__ == "__main__":
    main(sys.argv[1:])
