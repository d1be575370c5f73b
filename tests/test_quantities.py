"""One source per quantity (u2ad_core.book.quantities) and the site check that enforces it."""

import pytest

from u2ad_core.book import quantities as Q
from u2ad_core.book import sitecheck as SC


def test_record_read_show(tmp_path):
    assert Q.record_quantity(tmp_path, "u2ad_ms_per_image", 53.249, unit="ms", source="09") == "53.2 ms"
    assert Q.record_quantity(tmp_path, "adapt_epochs", 48) == "48"
    assert Q.record_quantity(tmp_path, "share", 12.345, unit="%") == "12.3%"
    assert Q.read_quantity(tmp_path, "u2ad_ms_per_image")["source"] == "09"
    span = Q.show_quantity(tmp_path, "u2ad_ms_per_image")
    assert span == '<span class="u2ad-quantity" data-quantity="u2ad_ms_per_image">53.2 ms</span>'
    assert Q.quantity_texts(f"<p>took {span}, {Q.show_quantity(tmp_path, 'adapt_epochs')}</p>") == \
        {"u2ad_ms_per_image": {"53.2 ms"}, "adapt_epochs": {"48"}}
    Q.record_quantity(tmp_path, "adapt_epochs", 96)  # a later record replaces the earlier
    assert Q.read_quantity(tmp_path, "adapt_epochs")["value"] == 96


def test_clear_errors(tmp_path):
    with pytest.raises(KeyError, match="has not run in this build"):
        Q.read_quantity(tmp_path, "missing")
    with pytest.raises(ValueError, match="lower-case"):
        Q.record_quantity(tmp_path, "Bad Name", 1.0)
    with pytest.raises(TypeError):
        Q.record_quantity(tmp_path, "x", [1, 2])
    (tmp_path / Q.QUANTITIES_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not a valid quantities file"):
        Q.read_quantity(tmp_path, "x")


def _page(root, name, body):
    (root / name).write_text(f"<html><body>{body}</body></html>")


def test_sitecheck_fails_when_a_quantity_differs_between_pages(tmp_path):
    span = '<span class="u2ad-quantity" data-quantity="u2ad_ms_per_image">{}</span>'
    _page(tmp_path, "index.html", "<p>" + span.format("53.2 ms") + "</p>")
    _page(tmp_path, "a.html", "<p>" + span.format("53.2 ms") + "</p>")
    assert SC.check_site(tmp_path)[0] == []
    _page(tmp_path, "b.html", "<p>" + span.format("93.4 ms") + "</p>")
    problems, _ = SC.check_site(tmp_path)
    assert len(problems) == 1 and "u2ad_ms_per_image reads differently" in problems[0]
    assert "'93.4 ms' on b.html" in problems[0] and "'53.2 ms' on a.html, index.html" in problems[0]
