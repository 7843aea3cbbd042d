"""Speed and search-efficiency measurements; `python -m benchmarks.run --help`."""
