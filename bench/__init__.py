"""Benchmarks that compare Nightbox against other tools in the same run."""
