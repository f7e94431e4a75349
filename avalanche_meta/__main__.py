"""``python -m avalanche_meta``: the same as the ``avalanche-meta`` command."""

from avalanche_meta.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
