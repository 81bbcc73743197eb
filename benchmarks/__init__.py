"""Benchmarks for clipsearch: each script measures, prints a table and writes JSON under benchmarks/results/."""
