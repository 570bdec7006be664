"""Corpus-level metrics that are not per-example means (span F1 as in conlleval, token accuracy) and
split-level scores (binary AUC, explained variance, MAE in original units)."""

from jmtl.metrics.scores import binary_auc, destandardize, explained_variance, mae_original_units, split_level_metrics
from jmtl.metrics.spans import SpanScores, extract_spans, span_f1, split_tag, to_iob2, token_accuracy

__all__ = [
    "SpanScores",
    "binary_auc",
    "destandardize",
    "explained_variance",
    "extract_spans",
    "mae_original_units",
    "span_f1",
    "split_level_metrics",
    "split_tag",
    "to_iob2",
    "token_accuracy",
]
