"""`python launch.py ...` in a checkout is the `xydiff` command (xydiff/command.py)."""
from xydiff import command
command.run()
