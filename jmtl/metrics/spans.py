"""Span (chunk / named-entity) precision, recall and F1, computed the way CoNLL's ``conlleval`` does.

A tag is ``O`` or ``P-TYPE`` with prefix ``P`` in ``B`` (begin), ``I`` (inside), ``E`` (end) or ``S``
(single). The same boundary rules read IOB1 (``B-`` only between two adjacent spans of one type),
IOB2 (every span opens with ``B-``) and IOBES, so gold and predictions may even use different
schemes. Walking a sentence left to right with the previous tag ``(p', t')`` (``O`` before the
first token and after the last one):

* a span **ends** before the current token ``(p, t)`` when ``p'`` is ``E`` or ``S``; or ``p'`` is
  ``B``/``I`` and ``p`` is ``B``, ``S`` or ``O``; or ``p'`` is not ``O`` and ``t != t'``;
* a span **starts** at the current token when ``p`` is ``B`` or ``S``; or ``p`` is ``I``/``E`` and
  ``p'`` is ``O``, ``E`` or ``S``; or ``p`` is not ``O`` and ``t != t'``.

So ``I-X`` after ``O`` or after another type opens a span (IOB1 does this on purpose; in IOB2 it is
an ill-formed sequence that conlleval reads the same way), and ``B-X`` after ``I-X`` closes one
span and opens the next. A predicted span is correct when a gold span has the same type, start
and end in the same sentence; precision, recall and F1 count such exact matches. (conlleval
tracks "both spans open since the same token" while scanning, which is the same thing: a span's
type cannot change inside it.) ``conlleval`` prints percentages; these functions return fractions.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Iterable, Sequence

OUTSIDE = "O"
_PREFIXES = ("B", "I", "E", "S")

Span = tuple[str, int, int]  # (type, start, end) with end exclusive


def split_tag(tag: str) -> tuple[str, str]:
    """``'B-NP' -> ('B', 'NP')``, ``'O' -> ('O', '')``.

    Raises ValueError on anything else (a tag without a known prefix would silently change the
    spans otherwise).
    """
    if tag == OUTSIDE:
        return OUTSIDE, ""
    prefix, sep, kind = tag.partition("-")
    if not sep or prefix not in _PREFIXES or not kind:
        raise ValueError(f"not a span tag: {tag!r} (expected 'O' or B-/I-/E-/S- followed by a type)")
    return prefix, kind


def _ends(prev: tuple[str, str], cur: tuple[str, str]) -> bool:
    (pp, pt), (cp, ct) = prev, cur
    if pp == OUTSIDE:
        return False
    if pp in ("E", "S"):
        return True
    if cp in ("B", "S", OUTSIDE):
        return True
    return pt != ct


def _starts(prev: tuple[str, str], cur: tuple[str, str]) -> bool:
    (pp, pt), (cp, ct) = prev, cur
    if cp == OUTSIDE:
        return False
    if cp in ("B", "S"):
        return True
    if pp in (OUTSIDE, "E", "S"):
        return True
    return pt != ct


def extract_spans(tags: Sequence[str]) -> list[Span]:
    """The spans of one sentence's tag sequence, in order: ``[(type, start, end_exclusive), ...]``."""
    out: list[Span] = []
    prev = (OUTSIDE, "")
    start = None
    for i, tag in enumerate(tags):
        cur = split_tag(tag)
        if start is not None and _ends(prev, cur):
            out.append((prev[1], start, i))
            start = None
        if _starts(prev, cur):
            start = i
        prev = cur
    if start is not None:
        out.append((prev[1], start, len(tags)))
    return out


def to_iob2(tags: Sequence[str]) -> list[str]:
    """Rewrites a tag sequence (IOB1, IOB2 or IOBES) as IOB2 with exactly the same spans."""
    out = [OUTSIDE] * len(tags)
    for kind, start, end in extract_spans(tags):
        out[start] = f"B-{kind}"
        for i in range(start + 1, end):
            out[i] = f"I-{kind}"
    return out


@dataclasses.dataclass(frozen=True)
class SpanScores:
    """Corpus-level span scores (fractions, not percentages)."""

    precision: float
    recall: float
    f1: float
    num_gold: int
    num_predicted: int
    num_correct: int
    per_type: dict[str, dict[str, float]]

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _prf(correct: int, predicted: int, gold: int) -> tuple[float, float, float]:
    p = correct / predicted if predicted else 0.0
    r = correct / gold if gold else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def span_f1(gold: Iterable[Sequence[str]], predicted: Iterable[Sequence[str]]) -> SpanScores:
    """conlleval's overall and per-type precision / recall / F1 over a corpus of sentences.

    gold, predicted: one tag sequence per sentence, pairwise of equal length.
    """
    n_gold: collections.Counter = collections.Counter()
    n_pred: collections.Counter = collections.Counter()
    n_ok: collections.Counter = collections.Counter()
    num_sentences = 0
    for i, (g, p) in enumerate(zip(gold, predicted, strict=True)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted tags")
        gs, ps = set(extract_spans(g)), set(extract_spans(p))
        n_gold.update(s[0] for s in gs)
        n_pred.update(s[0] for s in ps)
        n_ok.update(s[0] for s in gs & ps)
        num_sentences += 1
    per_type = {}
    for kind in sorted(set(n_gold) | set(n_pred)):
        p, r, f = _prf(n_ok[kind], n_pred[kind], n_gold[kind])
        per_type[kind] = dict(precision=p, recall=r, f1=f, num_gold=n_gold[kind], num_predicted=n_pred[kind])
    tot_ok, tot_pred, tot_gold = sum(n_ok.values()), sum(n_pred.values()), sum(n_gold.values())
    p, r, f = _prf(tot_ok, tot_pred, tot_gold)
    return SpanScores(p, r, f, tot_gold, tot_pred, tot_ok, per_type)


def token_accuracy(gold: Iterable[Sequence[str]], predicted: Iterable[Sequence[str]]) -> float:
    """Fraction of tokens whose predicted tag equals the gold tag (POS accuracy; conlleval's
    'accuracy' line for chunk tags)."""
    right = total = 0
    for i, (g, p) in enumerate(zip(gold, predicted, strict=True)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted tags")
        right += sum(a == b for a, b in zip(g, p))
        total += len(g)
    return right / total if total else 0.0
