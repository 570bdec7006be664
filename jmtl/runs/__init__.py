"""A run's records on disk: its working directory (lock, resume policy, records), orbax checkpoints,
metric writers (JSONL, TensorBoard, W&B) and the identity of what it trains on (compared on resume).

The trainer (:mod:`jmtl.training`) writes through these; nothing here trains.
"""

__all__ = ["checkpoint", "identity", "metric_writers", "workdir"]
