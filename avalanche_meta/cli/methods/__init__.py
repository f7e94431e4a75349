"""Command-line wiring of each method: one module per method registers its
strategies, reproductions and benches (see :mod:`avalanche_meta.cli.registry`)."""
