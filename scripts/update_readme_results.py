#!/usr/bin/env python
"""Rewrite README.md's results block (between <!-- results:start --> and <!-- results:end -->)
from the benchmark JSON files; same as `napari-textdiff benchmark report`.

Usage: python scripts/update_readme_results.py [--results benchmark_results] [--readme README.md]
       [--output COPY.md] [--print]
"""
from __future__ import annotations

import sys

from napari_textdiff.cli import main

if __name__ == "__main__":
    sys.exit(main(["benchmark", "report", *sys.argv[1:]]))
