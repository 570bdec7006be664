"""Experiment drivers on top of the trainer: ablation grids (methods x architectures x seeds, with
single-task baselines, Δm% and MR) and hierarchical multi-task tagging. The scripts in
``experiments/`` are their command lines."""

__all__ = ["ablation", "tagging"]
