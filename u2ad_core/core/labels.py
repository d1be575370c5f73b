"""Label values and segment names shared by the phantom, the loaders and the scoring.

Label values follow the authors' data (method.md section 1); segments run between
consecutive vertebral-body centroids (C2-3 = from the C2 centroid to the C3 centroid).
"""

from __future__ import annotations

DISC = 1
VERTEBRAL_BODY = 2
CORD = 3
CSF = 4
DISC_HERNIATION = 5
HYPERINTENSITY = 6

LABELS: dict[int, str] = {
    DISC: "intervertebral disc",
    VERTEBRAL_BODY: "vertebral body",
    CORD: "spinal cord",
    CSF: "CSF",
    DISC_HERNIATION: "disc herniation",
    HYPERINTENSITY: "T2 hyperintensity",
}

VERTEBRAE: tuple[str, ...] = ("C2", "C3", "C4", "C5", "C6", "C7", "T1")
SEGMENTS: tuple[str, ...] = ("C2-3", "C3-4", "C4-5", "C5-6", "C6-7", "C7-T1")
"""Segment names; in segment maps segment ``SEGMENTS[i]`` has value ``i + 1`` (0 = none)."""


def segment_value(name: str) -> int:
    """``"C4-5"`` -> 3 (its value in segment maps). Raises ``ValueError`` for unknown names."""
    try:
        return SEGMENTS.index(name) + 1
    except ValueError:
        raise ValueError(f"unknown segment {name!r}; expected one of {SEGMENTS}") from None


def parse_segments(text: str) -> tuple[str, ...]:
    """``"C4-5;C5-6"`` -> ``("C4-5", "C5-6")``; empty / ``n/a`` -> ``()``; validates names."""
    text = (text or "").strip()
    if text.lower() in {"", "n/a", "na", "none"}:
        return ()
    names = tuple(s.strip() for s in text.split(";") if s.strip())
    for n in names:
        segment_value(n)
    return names
