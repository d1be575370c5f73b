"""Metrics, one idea per module: detection metrics and the cross-validation protocol
(:mod:`~u2ad_core.metrics.detection`), pixel and region metrics (:mod:`~u2ad_core.metrics.pixel`),
label-free model selection (:mod:`~u2ad_core.metrics.selection`), reconstruction quality
(:mod:`~u2ad_core.metrics.reconstruction`) and the verdict rule (:mod:`~u2ad_core.metrics.verdicts`).
The reconstruction diagnostics (:mod:`~u2ad_core.metrics.residuals`) too. Every public name of
the six is re-exported here (``from u2ad_core import metrics as ev``; ``ev.cross_validate``,
``ev.compare`` ...). Imports only ``core``."""

from u2ad_core.metrics import detection, pixel, reconstruction, residuals, selection, verdicts
from u2ad_core.metrics.detection import *  # noqa: F401,F403
from u2ad_core.metrics.pixel import *  # noqa: F401,F403
from u2ad_core.metrics.reconstruction import *  # noqa: F401,F403
from u2ad_core.metrics.residuals import *  # noqa: F401,F403
from u2ad_core.metrics.selection import *  # noqa: F401,F403
from u2ad_core.metrics.verdicts import *  # noqa: F401,F403

__all__ = [*verdicts.__all__, *detection.__all__, *pixel.__all__, *selection.__all__, *reconstruction.__all__,
           *residuals.__all__]
