"""Evaluation: batched greedy generation, local HF `evaluate` metrics, the promotion gate."""
