"""Data: the phantom, reading NIfTI layouts, preprocessing into dataset files, pseudo-anomalies,
realism checks against real MRI, fetching the public real files. Imports only ``core``."""
