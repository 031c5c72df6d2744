"""Microbenchmarks of the fused ops and of one training step; see benchmarks/README.md."""
