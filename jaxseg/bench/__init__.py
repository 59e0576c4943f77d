"""Benchmarks of jaxseg against XLA, the naive zero-insertion form and PyTorch: `python -m jaxseg.bench`."""
