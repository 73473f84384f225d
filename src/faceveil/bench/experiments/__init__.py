"""Paper-specific experiments (tables, figures, ablations), one module per defense, registered in
:data:`faceveil.bench.runner.EXPERIMENTS` (which imports every module here on first use); they run when
their defense is named in ``--defenses``."""
