"""Reading times from an executed page's words and figures (u2ad_core.book.reading)."""

import pytest

from u2ad_core.book import reading as RD


def _nb():
    return {"cells": [
        {"cell_type": "markdown", "metadata": {}, "source": "# Title\n\nfour words of prose\n```python\nx = 1 + 2\n```"},
        {"cell_type": "markdown", "metadata": {"tags": ["u2ad-run-header"]}, "source": "not read at all here"},
        {"cell_type": "code", "metadata": {"tags": ["remove-cell"]}, "source": "print('hidden')",
         "outputs": [{"output_type": "stream", "text": "never shown words"}]},
        {"cell_type": "code", "metadata": {}, "source": "many code words are not read",
         "outputs": [{"output_type": "stream", "text": "two words\n"},
                     {"output_type": "display_data", "data": {"image/png": "...", "text/plain": "<Figure 640x480>"}},
                     {"output_type": "display_data", "data": {"text/html": "<style>td {x: y}</style><table><td>a b</td></table>",
                                                             "text/plain": "ignored when html exists"}},
                     {"output_type": "display_data", "data": {"text/markdown": "one two three"}}]},
    ]}


def test_reading_stats_counts_what_a_reader_sees():
    s = RD.reading_stats(_nb())
    assert (s.prose_words, s.output_words, s.figures) == (6, 7, 1)
    assert s.words == 13 and s.minutes == 1


def test_reading_minutes():
    assert RD.reading_minutes(2000, 0) == 10
    assert RD.reading_minutes(2000, 4) == 12  # 4 x 30 s
    assert RD.reading_minutes(1, 0) == 1
    with pytest.raises(ValueError):
        RD.reading_minutes(-1, 0)
