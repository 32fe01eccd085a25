"""The `xydiff` console command: the launcher, or one of the tools by name.

  xydiff --config=gopro --workdir=DIR [--mode=...]   (xydiff/main.py)
  xydiff TOOL ...                                    (xydiff/tools/TOOL.py)

Each is imported only when asked for, so a tool's flags never meet the
launcher's in absl's one flag registry.
"""

from __future__ import annotations

import importlib
import sys

TOOLS = ('import_weights', 'fetch_weights', 'summary', 'export', 'serve')


def run() -> None:
  if len(sys.argv) > 1 and sys.argv[1] in TOOLS:
    tool = sys.argv.pop(1)
    sys.argv[0] = f'xydiff {tool}'
    importlib.import_module(f'xydiff.cli.{tool}').main()
    return
  importlib.import_module('xydiff.cli.launch').launch()
