"""``python -m natstream``: the ``natstream`` command."""

from ._cli import main

if __name__ == "__main__":
    main(prog_name="natstream")
