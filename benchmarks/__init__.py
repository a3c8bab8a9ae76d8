"""smackctl's own performance measurements (see BENCHMARKS.md)."""
