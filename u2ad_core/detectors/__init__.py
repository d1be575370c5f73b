"""Supervised detectors trained from scratch (paper Table 2, Appendix B.2), plain torch."""

from u2ad_core.detectors.protocol import *  # noqa: F401,F403
from u2ad_core.detectors.protocol import __all__  # noqa: F401
