"""`make bench`: corpus generation and the benchmark of the service (see BENCHMARKS.md)."""
