"""Image degradations of chapter 08's robustness study: additive Gaussian noise and loss of
resolution (downsampled, then upsampled back to the original size)::

    from u2ad_core.experiments.robustness import degrade
    noisy = degrade(d.images, sigma=0.05, generator=make_generator(seed))   # (N, H, W)
    coarse = degrade(d.images, factor=2)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike


def degrade(images: ArrayLike, sigma: float = 0.0, factor: int = 1,
            generator: torch.Generator | None = None) -> np.ndarray:
    """A degraded copy of ``images`` (N, H, W) with values in [0, 1]; float32 (N, H, W).

    factor > 1: area-downsampled by ``factor`` and bilinearly upsampled back to (H, W) (first);
    sigma > 0: plus Gaussian noise of std ``sigma`` drawn from ``generator`` (None: torch's
    default generator). The result is clipped to [0, 1]; with neither it is a clipped copy.
    """
    x = torch.as_tensor(np.asarray(images, dtype=np.float32))[:, None]
    if factor > 1:
        x = F.interpolate(F.interpolate(x, scale_factor=1 / factor, mode="area"), size=x.shape[-2:],
                          mode="bilinear", align_corners=False)
    if sigma > 0:
        x = x + sigma * torch.randn(x.shape, generator=generator)
    return x.clamp(0, 1)[:, 0].numpy()
