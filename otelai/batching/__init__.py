"""Adaptive batching: group requests into batches sized online to a p99 latency target."""
