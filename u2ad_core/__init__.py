"""u2ad_core: the package behind the U2AD book.

Folders are layers, listed bottom to top; a module imports only from its own folder or from the
layers below it (``tests/test_architecture.py`` checks):

- ``core/``        typed configuration and presets, devices and seeds, atomic files, the run
                   store, label values, the run context
- ``data/``        the phantom, NIfTI layouts, preprocessing, datasets, pseudo-anomalies,
                   realism against real MRI, fetching the public real files
- ``metrics/``     detection metrics and cross-validation, pixel / region metrics, label-free
                   selection, reconstruction quality, verdict words
- ``method/``      U2AD: EdgeMAE, mask samplers, the Monte-Carlo engine, training, scoring,
                   inference
- ``baselines/``   the other anomaly detectors, one module per method
- ``detectors/``   supervised detectors trained from scratch
- ``book/``        building the book, notebook set-up, sweeps, site checks, figures, widgets
- ``experiments/`` what the chapters run: crossover grid, training budget, real MRI, benchmark
- ``cli``          the ``u2ad`` command
"""

__version__ = "0.1.0"
