"""What this book finds: each chapter records its headline verdicts, one page shows them all.

A chapter that decides a question the reader came for (has the model learned? does U2AD beat
the simplest detector? does a claim of the paper hold here?) records the answer where it
computes it, from the same numbers and the same verdict rule its page prints::

    from u2ad_core.book.findings import record_finding
    record_finding(ctx.run_dir, "u2ad_vs_zscore_renji_like", topic="where",
                   question="Does U2AD detect lesion patients better than Z-scoring (renji_like)?",
                   answer=compare(...),            # a verdict word, never typed
                   evidence="patient AUROC 0.937 ± 0.057 vs 0.870 ± 0.12 over test folds",
                   chapter="07_detection")

The page "What this book finds" (``notebooks/90_findings.ipynb``, executed after every chapter
and listed right after the introduction) reads them with :func:`read_findings` and shows one
table per topic (:data:`TOPICS`). Nothing on that page is typed: a finding no chapter recorded
in this build is absent, and the page says which chapters recorded none.

File: ``<run_dir>/findings.json``, ``{key: {...}}``, written atomically; recording a key again
replaces it (a chapter executed again overwrites its own findings).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pandas as pd

from u2ad_core.book.results import read_keyed, update_keyed

__all__ = ["FINDINGS_FILE", "TOPICS", "record_finding", "read_findings", "topic_table", "beats"]

FINDINGS_FILE = "findings.json"
TOPICS: dict[str, str] = {
    "model": "Has the model learned what a healthy cord looks like?",
    "paper": "Do the paper's claims hold on the phantom?",
    "ideas": "Do U2AD's three ideas each pay off?",
    "where": "Where does the method help, and against what?",
    "real": "What transfers to real MRI?",
    "field": "How does U2AD compare with the rest of the field?",
}
"""The findings page's sections, in order: topic key -> the question the section answers."""
_KEY = re.compile(r"^[a-z0-9_]+$")


def beats(verdict: str, other: str) -> str:
    """The answer to "does A beat ``other``?" from :func:`~u2ad_core.metrics.compare` (A, other):
    ``"yes"``, ``"no: {other} is better"``, or the verdict itself (no clear difference, not measured)."""
    return {"better": "yes", "worse": f"no: {other} is better"}.get(verdict, verdict)


def _load(run_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    return read_keyed(Path(run_dir) / FINDINGS_FILE, "findings")


def record_finding(run_dir: str | os.PathLike, key: str, *, topic: str, question: str, answer: str,
                   evidence: str, chapter: str) -> None:
    """Record (or replace) one finding of this build.

    key: unique id (lower-case, digits, _); topic: a key of :data:`TOPICS`; question: what the
    reader wants to know; answer: the verdict, as the chapter's rule gave it ("better", "no
    clear difference", "holds", ...); evidence: the numbers behind it, as text; chapter: the
    notebook's stem (``"07_detection"``), where the evidence is shown.
    """
    if not _KEY.match(key):
        raise ValueError(f"finding key {key!r}: use lower-case letters, digits and _")
    if topic not in TOPICS:
        raise ValueError(f"finding {key}: unknown topic {topic!r}; one of {', '.join(TOPICS)}")
    for name, v in (("question", question), ("answer", answer), ("evidence", evidence), ("chapter", chapter)):
        if not isinstance(v, str) or not v.strip():
            raise ValueError(f"finding {key}: {name} must be non-empty text")
    entry = {"topic": topic, "question": question.strip(), "answer": answer.strip(), "evidence": evidence.strip(),
             "chapter": chapter}
    update_keyed(Path(run_dir) / FINDINGS_FILE, key, entry, "findings")


def read_findings(run_dir: str | os.PathLike) -> pd.DataFrame:
    """Every recorded finding, one row each (columns key, topic, question, answer, evidence,
    chapter), ordered by topic (as in :data:`TOPICS`), then chapter, then key; empty when none."""
    rows = [{"key": k, **v} for k, v in _load(run_dir).items()]
    cols = ["key", "topic", "question", "answer", "evidence", "chapter"]
    if not rows:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(rows)[cols]
    df["_t"] = df["topic"].map({t: i for i, t in enumerate(TOPICS)})
    return df.sort_values(["_t", "chapter", "key"]).drop(columns="_t").reset_index(drop=True)


def topic_table(findings: pd.DataFrame, topic: str) -> pd.DataFrame:
    """The rows of one topic as the page shows them: question, answer, evidence, chapter
    (the chapter's number, e.g. ``"07"``)."""
    sub = findings[findings["topic"] == topic]
    out = sub[["question", "answer", "evidence"]].copy()
    out["chapter"] = sub["chapter"].str.split("_").str[0]
    return out.reset_index(drop=True)
