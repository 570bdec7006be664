"""Corpus-level metrics that are not per-example means (span F1 as in conlleval, token accuracy)."""

from jmtl.metrics.spans import SpanScores, extract_spans, span_f1, split_tag, to_iob2, token_accuracy

__all__ = ["SpanScores", "extract_spans", "span_f1", "split_tag", "to_iob2", "token_accuracy"]
