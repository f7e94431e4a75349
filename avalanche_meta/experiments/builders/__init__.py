"""Strategy and benchmark builders, presets and the papers' hyper-parameters, one
module per method; importing a module registers its entries
(:mod:`avalanche_meta.experiments.registry`)."""
