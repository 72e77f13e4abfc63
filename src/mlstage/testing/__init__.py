"""Real components for tests and benchmarks, started on 127.0.0.1 (never used by the product)."""
