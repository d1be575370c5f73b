"""u2ad_core.book.source: the package's code on the page and fill-in exercises checked against it."""

import inspect

import numpy as np
import pytest
import torch

from u2ad_core.book.source import MATCHES, NOT_FILLED, check_fill_in, source_markdown
from u2ad_core.method.masking import eu_mask_probabilities
from u2ad_core.method.scoring import anomaly_curve


def test_source_markdown_is_the_functions_own_source_in_a_python_block():
    md = source_markdown(anomaly_curve)
    head, rest = md.split("\n\n", 1)
    assert "`u2ad_core.method.scoring.anomaly_curve`" in head and "u2ad_core/method/scoring.py" in head
    assert "/work" not in md and "/home" not in md  # no machine path
    assert rest.startswith("```python\n") and rest.endswith("```\n")
    assert rest[len("```python\n"):-len("```\n")].rstrip("\n") == inspect.getsource(anomaly_curve).rstrip("\n")
    _, start = inspect.getsourcelines(anomaly_curve)
    n = len(inspect.getsourcelines(anomaly_curve)[0])
    assert f"lines {start}-{start + n - 1}" in head


def test_source_markdown_line_range_and_bad_input():
    src = inspect.getsource(eu_mask_probabilities).splitlines()
    md = source_markdown(eu_mask_probabilities, lines=(1, 3))
    code = md.split("```python\n")[1].split("```")[0]
    assert code == "\n".join(src[:3]) + "\n"
    assert "(its lines 1-3 of " in md
    with pytest.raises(ValueError, match="outside"):
        source_markdown(eu_mask_probabilities, lines=(0, 3))
    with pytest.raises(ValueError, match="outside"):
        source_markdown(eu_mask_probabilities, lines=(2, 10_000))
    with pytest.raises(TypeError, match="no Python source"):
        source_markdown(len)


def test_show_source_displays_markdown(monkeypatch):
    import IPython.display

    from u2ad_core.book.source import show_source

    shown = []
    monkeypatch.setattr(IPython.display, "display", shown.append)
    assert show_source(anomaly_curve, lines=(1, 2)) is None
    assert len(shown) == 1 and isinstance(shown[0], IPython.display.Markdown)
    assert shown[0].data == source_markdown(anomaly_curve, lines=(1, 2))


def test_check_fill_in_unfilled_right_wrong_and_broken(capsys):
    maps = np.arange(12, dtype=float).reshape(1, 3, 4)
    assign = np.array([[[0, 0, -1, -1], [1, 1, 1, -1], [-1, -1, -1, -1]]])

    def unfilled(m, a):
        return ...

    def unfilled_op(m, a):
        return np.asarray(...) / 2 + ...  # TypeError on the ellipsis

    def right(m, a):
        return anomaly_curve(m, a)

    def wrong(m, a):
        return anomaly_curve(m, a) + 1

    def broken(m, a):
        raise KeyError("oops")

    def said(*args, **kw):
        assert check_fill_in(*args, **kw) is None  # a notebook cell shows only the printed line
        out = capsys.readouterr().out
        assert out.count("\n") == 1, out
        return out

    assert NOT_FILLED in said(unfilled, anomaly_curve, maps, assign)
    assert NOT_FILLED in said(unfilled_op, anomaly_curve, maps, assign)
    assert MATCHES in said(right, anomaly_curve, maps, assign)  # NaN rows compare equal
    assert "not the same" in said(wrong, anomaly_curve, maps, assign)
    assert "KeyError" in said(broken, anomaly_curve, maps, assign)
    # tuples of tensors, with tolerances; float32 results get float32 tolerances
    t = torch.ones(2, 3)
    assert MATCHES in said(lambda a: (a, a * 2 + 1e-9), lambda a: (a, a * 2), t, atol=1e-6)
    assert MATCHES in said(lambda a: a * (1 + 1e-7), lambda a: a, t)
    assert NOT_FILLED in said(lambda a: (a, ...), lambda a: (a, a), t)
