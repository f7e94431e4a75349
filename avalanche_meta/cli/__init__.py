"""The command line (``avalanche-meta``): run, compare, reproduce, bench, list, store.

A thin layer: :mod:`avalanche_meta.cli.main` parses the arguments, calls the
experiments layer (:mod:`avalanche_meta.experiments`: registries, builders, the
papers' tables, benches, the runner, the run store and executors) and prints.
Strategies and plugins never import it. The modules ``cli.registry``,
``cli.context``, ``cli.runner``, ``cli.results_doc``, ``cli.plots``,
``cli.bench_sweep`` and ``cli.methods.*`` are the old names of experiments modules,
kept importable.
"""
