"""Command-line tools beside launch.py, each run as `python -m xydiff.tools.<name>`."""
