"""`python launch.py ...` in a checkout is the `xydiff` command (xydiff/cli)."""
from xydiff import cli
cli.run()
