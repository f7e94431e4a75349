"""The command line (``avalanche-meta``): run, compare, reproduce, bench, list.

The only layer that knows every part of the package: the registries of strategies,
benchmarks, reproductions and benches (:mod:`avalanche_meta.cli.registry`), the
experiment runner (:mod:`avalanche_meta.cli.runner`), plots and the argument parser
(:mod:`avalanche_meta.cli.main`). Strategies and plugins never import it.
"""
