"""`python launch.py ...` in a checkout is the `xydiff` command (xydiff/main.py)."""
from xydiff import main
main.run()
