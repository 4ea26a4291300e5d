"""visionq benchmarks: `python -m bench --help`. See bench/__main__.py."""
