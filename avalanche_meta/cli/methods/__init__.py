"""Old home of the strategy builders, reproductions and benches, which now live in
:mod:`avalanche_meta.experiments` (``builders``, ``tables``, ``benches``); each
module here re-exports the names of the modules that replaced it."""
