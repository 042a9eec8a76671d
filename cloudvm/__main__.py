"""``python -m cloudvm``: the ``cloudvm`` command."""

from ._cli import main

if __name__ == "__main__":
    main()
