"""Corpus-level metrics that are not per-example means (span F1 as in conlleval, token accuracy) and
split-level scores (binary AUC and F1, explained variance, MAE in original units)."""

from jmtl.metrics.scores import (
    binary_auc,
    binary_f1,
    binary_f1_counts,
    destandardize,
    explained_variance,
    f1_from_counts,
    mae_original_units,
    split_level_metrics,
)
from jmtl.metrics.spans import SpanScores, extract_spans, span_f1, split_tag, to_iob2, token_accuracy

__all__ = [
    "SpanScores",
    "binary_auc",
    "binary_f1",
    "binary_f1_counts",
    "destandardize",
    "explained_variance",
    "extract_spans",
    "f1_from_counts",
    "mae_original_units",
    "span_f1",
    "split_level_metrics",
    "split_tag",
    "to_iob2",
    "token_accuracy",
]
