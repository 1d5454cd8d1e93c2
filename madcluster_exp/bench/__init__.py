"""Benchmarks (`make bench`): each prints a table with ratios against a baseline measured in the
same process and writes its figures to outputs/bench/<name>.json."""
