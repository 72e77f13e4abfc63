"""Benchmarks: each prints one JSON object and measures a peer in the same run."""
