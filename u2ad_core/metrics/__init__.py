"""Metrics: detection metrics and the cross-validation protocol, pixel and region metrics,
label-free model selection, reconstruction quality, verdict words. Imports only ``core``."""

from u2ad_core.metrics.detection import *  # noqa: F401,F403
from u2ad_core.metrics.detection import __all__  # noqa: F401
