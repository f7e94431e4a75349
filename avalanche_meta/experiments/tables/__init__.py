"""Reproductions (``avalanche-meta reproduce NAME``): the papers' tables, one module per
method. Each declares its runs and builds its table from the finished runs of a run
store (see :mod:`avalanche_meta.experiments.reproduction`)."""
