"""The findings record (u2ad_core.book.findings): what each chapter decides, read by one page."""

import pytest

from u2ad_core.book import findings as F


def _rec(run, key, topic, chapter, answer="no clear difference"):
    F.record_finding(run, key, topic=topic, question=f"{key}?", answer=answer, evidence="0.9 vs 0.8",
                     chapter=chapter)


def test_record_and_read_in_page_order(tmp_path):
    assert F.read_findings(tmp_path).empty
    _rec(tmp_path, "zz_field", "field", "13_beyond_u2ad")
    _rec(tmp_path, "b_where", "where", "10_crossover")
    _rec(tmp_path, "a_where", "where", "07_detection", answer="better")
    _rec(tmp_path, "learned", "model", "12_training_budget")
    df = F.read_findings(tmp_path)
    assert list(df["key"]) == ["learned", "a_where", "b_where", "zz_field"]
    _rec(tmp_path, "a_where", "where", "07_detection", answer="worse")  # a rerun replaces it
    t = F.topic_table(F.read_findings(tmp_path), "where")
    assert list(t.columns) == ["question", "answer", "evidence", "chapter"]
    assert t.to_dict("records")[0] == {"question": "a_where?", "answer": "worse", "evidence": "0.9 vs 0.8",
                                       "chapter": "07"}


def test_bad_findings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown topic"):
        _rec(tmp_path, "k", "nope", "07_detection")
    with pytest.raises(ValueError, match="lower-case"):
        _rec(tmp_path, "Bad Key", "model", "07_detection")
    with pytest.raises(ValueError, match="answer must be non-empty"):
        _rec(tmp_path, "k", "model", "07_detection", answer=" ")
    (tmp_path / F.FINDINGS_FILE).write_text("{")
    with pytest.raises(ValueError, match="not a valid findings file"):
        F.read_findings(tmp_path)


def test_beats_words():
    assert F.beats("better", "Z-scoring") == "yes"
    assert F.beats("worse", "Z-scoring") == "no: Z-scoring is better"
    assert F.beats("no clear difference", "Z-scoring") == "no clear difference"
