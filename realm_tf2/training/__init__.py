"""Shared training-driver pieces: strategies, metrics.jsonl, progress, the Trainer and experiment runner."""
