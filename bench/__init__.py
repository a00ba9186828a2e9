"""Benchmarks: each module measures one part against a baseline taken in the same run."""
