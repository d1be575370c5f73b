"""u2ad_core: the package behind the U2AD book.

One module per idea:

- ``config``      typed presets (smoke / cpu / paper), defaults cite the paper
- ``runtime``     devices, seeds, atomic writes, progress bars
- ``phantom``     procedural cervical-spine phantom written as NIfTI cohorts
- ``io``          NIfTI reading and layout detection (phantom, Spine Generic BIDS, authors')
- ``preprocess``  reorient, slice, resample, crop, normalise -> dataset file; ``dataset``
- ``pseudo``      pseudo-anomalies (paper Appendix A.1)
- ``model``       EdgeMAE (masked-autoencoder ViT with an edge head)
- ``masking``     random-ROI, EU-guided and AU-guided mask samplers
- ``uncertainty`` Monte-Carlo engine (fast) and the paper's Algorithm 1 (reference)
- ``train``       pretraining and two-stage uncertainty-guided adaptation
- ``scoring``     anomaly maps, curves, segment and patient scores
- ``evaluation``  cross-validated detection metrics
- ``book``        executes the notebooks with papermill and builds the Jupyter Book
"""

__version__ = "0.1.0"
