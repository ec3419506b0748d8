"""Benchmark suite: a streaming load generator (``benchmarks.loadgen``), request workloads
(``benchmarks.workloads``), the CLI (``python -m benchmarks``) and stand-alone benchmark scripts.
Results (JSON + PNG) go to ``benchmarks/results/``."""
