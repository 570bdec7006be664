"""Span extraction and F1 as conlleval computes them, on hand-worked IOB1 / IOB2 / IOBES cases."""

import pytest

from jmtl.metrics import extract_spans, span_f1, to_iob2, token_accuracy


@pytest.mark.parametrize(
    "tags, expected",
    [
        # IOB2: every span opens with B-.
        (["B-NP", "I-NP", "O", "B-VP", "B-NP", "I-NP"], [("NP", 0, 2), ("VP", 3, 4), ("NP", 4, 6)]),
        # IOB1: I- opens a span after O; B- only splits two adjacent spans of one type.
        (["I-NP", "I-NP", "B-NP", "I-NP", "O", "I-VP"], [("NP", 0, 2), ("NP", 2, 4), ("VP", 5, 6)]),
        # IOB1: I-X right after I-Y opens a new span (type change).
        (["I-NP", "I-VP", "I-VP"], [("NP", 0, 1), ("VP", 1, 3)]),
        # Ill-formed IOB2 is read the same way: I-X after O or after B-Y starts a span.
        (["O", "I-NP", "I-NP"], [("NP", 1, 3)]),
        (["B-NP", "I-VP"], [("NP", 0, 1), ("VP", 1, 2)]),
        # B-X after B-X: two one-token spans.
        (["B-NP", "B-NP"], [("NP", 0, 1), ("NP", 1, 2)]),
        # A span runs to the end of the sentence.
        (["O", "B-PP", "I-PP"], [("PP", 1, 3)]),
        # IOBES: S- is a one-token span, E- closes, I- after E- opens a new span.
        (["S-PER", "B-ORG", "E-ORG", "I-ORG"], [("PER", 0, 1), ("ORG", 1, 3), ("ORG", 3, 4)]),
        (["O", "O"], []),
        ([], []),
    ],
)
def test_extract_spans(tags, expected):
    assert extract_spans(tags) == expected


def test_to_iob2_keeps_the_spans():
    iob1 = ["I-NP", "I-NP", "B-NP", "O", "I-PER", "I-LOC", "I-LOC"]
    assert to_iob2(iob1) == ["B-NP", "I-NP", "B-NP", "O", "B-PER", "B-LOC", "I-LOC"]
    assert extract_spans(to_iob2(iob1)) == extract_spans(iob1)
    iob2 = ["B-NP", "I-NP", "O", "B-VP"]
    assert to_iob2(iob2) == iob2


def test_span_f1_hand_worked_corpus():
    gold = [
        ["B-NP", "I-NP", "O", "B-VP"],  # NP(0,2) VP(3,4)
        ["I-NP", "I-NP", "B-NP"],  # IOB1: NP(0,2) NP(2,3)
    ]
    pred = [
        ["B-NP", "I-NP", "O", "B-NP"],  # NP(0,2) correct, NP(3,4) wrong type
        ["B-NP", "I-NP", "I-NP"],  # NP(0,3): matches neither gold span
    ]
    s = span_f1(gold, pred)
    assert (s.num_gold, s.num_predicted, s.num_correct) == (4, 3, 1)
    assert s.precision == pytest.approx(1 / 3)
    assert s.recall == pytest.approx(1 / 4)
    assert s.f1 == pytest.approx(2 / 7)
    assert s.per_type["NP"]["num_gold"] == 3 and s.per_type["NP"]["num_predicted"] == 3
    assert s.per_type["NP"]["precision"] == pytest.approx(1 / 3)
    assert s.per_type["VP"] == dict(precision=0.0, recall=0.0, f1=0.0, num_gold=1, num_predicted=0)
    assert token_accuracy(gold, pred) == pytest.approx(4 / 7)


def test_span_f1_mixed_schemes_and_sentence_boundaries():
    # Gold in IOB1, predictions in IOB2 with the same spans: perfect.
    gold = [["I-PER", "I-PER", "B-PER", "O"], ["I-ORG"]]
    pred = [["B-PER", "I-PER", "B-PER", "O"], ["B-ORG"]]
    assert span_f1(gold, pred).f1 == 1.0
    # A span never continues into the next sentence: each I-NP below is its own span.
    s = span_f1([["O", "I-NP"], ["I-NP", "O"]], [["O", "B-NP"], ["B-NP", "O"]])
    assert (s.num_gold, s.num_correct, s.f1) == (2, 2, 1.0)


def test_span_f1_edge_cases():
    s = span_f1([["B-NP"]], [["O"]])
    assert (s.precision, s.recall, s.f1) == (0.0, 0.0, 0.0)
    assert span_f1([["O"]], [["O"]]).f1 == 0.0  # nothing to find: conlleval reports 0
    with pytest.raises(ValueError, match="sentence 0: 2 gold tags but 1 predicted"):
        span_f1([["O", "O"]], [["O"]])
    with pytest.raises(ValueError, match="not a span tag: 'NP'"):
        extract_spans(["NP"])
    with pytest.raises(ValueError, match="not a span tag"):
        extract_spans(["X-NP"])
