"""`python launch.py --config=... --workdir=... [--mode=...]` in a checkout: the research
entry point, a shim onto the `xydiff` verbs (xydiff/cli/launch.py)."""
from xydiff.cli import launch
launch.main()
