"""The docs: the site builds strictly, and every `xydiff VERB --flag` they show exists.

The command lines are read from README.md and docs/**/*.md: fenced code blocks
other than Python and JSON, and inline code spans. Each `xydiff VERB` must name
a verb of xydiff.cli, and each long flag after it a flag of that verb
(`--config` and `--config.*` where the verb takes a config).
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

from xydiff import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Fenced blocks whose text is not a shell: `xydiff` there is Python or data.
_NOT_SHELL = {'python', 'py', 'json', 'yaml', 'toml'}
_FENCE = re.compile(r'^\s*```+\s*([\w+-]*)')
_INLINE = re.compile(r'(`+)(.+?)\1')
# One command of a line: shells split them at these.
_SEPARATORS = re.compile(r'&&|\|\||[;|&]|\$\(|`')
_CALL = re.compile(r'(?:^|[\s"\'(=])xydiff((?:\s+(?:-q|--quiet))*)\s+(\S+)(.*)$')
_FLAG = re.compile(r'(?:^|[\s"\'\[])(--[A-Za-z][\w.-]*)')
_GLOBAL = {'-q', '--quiet', '-h', '--help', '--version'}


def docs_files() -> list[pathlib.Path]:
  return [ROOT / 'README.md', *sorted((ROOT / 'docs').rglob('*.md'))]


def code_lines(text: str) -> list[tuple[int, str]]:
  """(line number, shell text) of the fenced shell blocks' lines and the inline code spans."""
  found, fence, lines = [], None, text.splitlines()
  pending, start = '', 0
  for number, line in enumerate(lines, 1):
    match = _FENCE.match(line)
    if match:
      fence = None if fence is not None else match.group(1).lower()
      continue
    if fence is not None:
      if fence in _NOT_SHELL:
        continue
      if not pending:
        start = number
      if line.rstrip().endswith('\\'):  # A command continued on the next line.
        pending += line.rstrip()[:-1] + ' '
        continue
      found.append((start, pending + line))
      pending = ''
    else:
      found += [(number, span) for _, span in _INLINE.findall(line)]
  return found


def _command(line: str) -> str:
  return line.split(' #', 1)[0]  # A shell comment.


def problems(text: str, where: str, verbs: dict) -> list[str]:
  """Every `xydiff WORD` whose WORD is no verb, and every --flag its verb lacks."""
  found = []
  for number, line in code_lines(text):
    for segment in _SEPARATORS.split(_command(line)):
      call = _CALL.search(segment)
      if call is None:
        continue
      word, rest = call.group(2), call.group(3)
      if word.startswith('-') or word.isupper() or not word[0].isalpha():
        continue  # `xydiff --help`, `xydiff VERB --help`: no verb named.
      name = word.replace('_', '-')
      if name not in verbs:
        found.append(f'{where}:{number}: `xydiff {word}` is no verb (verbs: {", ".join(verbs)})')
        continue
      command = verbs[name]
      flags = _GLOBAL | {option.replace('_', '-') for param in command.params
                         for option in (*param.opts, *param.secondary_opts)}
      for flag in _FLAG.findall(rest):
        bare = flag.split('=', 1)[0]
        if bare == '--config' or bare.startswith('--config.'):
          if not getattr(command, 'takes_config', False):
            found.append(f'{where}:{number}: `xydiff {word}` takes no {bare}')
        elif bare.replace('_', '-') not in flags:
          found.append(f'{where}:{number}: `xydiff {word}` has no flag {bare}')
  return found


def all_verbs() -> dict:
  return {command.name.replace('_', '-'): command for command in cli.verbs()}


def test_the_checker_finds_a_wrong_verb_and_a_wrong_flag():
  text = ('Run `xydiff deblurr photo.jpg -o out/`.\n\n```bash\n'
          'pip install -e . && xydiff deblur x.png -o out/ --modle=xydeblur_gopro\n'
          'xydiff serve --model=a \\\n    --auth-flie=users.txt   # a comment --not-a-flag\n'
          'xydiff export --workdir=w --out=m.onnx --config.model.width=8\n'
          'xydiff -q summary --all\n```\n\n```python\nfrom xydiff import nothing_here\n```\n')
  found = problems(text, 'sample.md', all_verbs())
  assert len(found) == 4, found
  assert '`xydiff deblurr` is no verb' in found[0] and 'sample.md:1:' in found[0]
  assert 'has no flag --modle' in found[1] and 'sample.md:4:' in found[1]
  assert 'has no flag --auth-flie' in found[2] and 'sample.md:5:' in found[2]
  assert 'takes no --config.model.width' in found[3]


def test_every_xydiff_verb_and_flag_in_the_docs_exists():
  verbs, found, calls = all_verbs(), [], 0
  for path in docs_files():
    text = path.read_text(encoding='utf-8')
    calls += sum(1 for _, line in code_lines(text) for segment in _SEPARATORS.split(line)
                 if _CALL.search(segment))
    found += problems(text, str(path.relative_to(ROOT)), verbs)
  assert calls > 50, f'only {calls} xydiff command lines found: is the reader broken?'
  assert not found, '\n'.join(found)


def test_the_readme_links_to_files_that_exist():
  # mkdocs checks the links between docs pages; the README lives outside docs/.
  text = (ROOT / 'README.md').read_text(encoding='utf-8')
  targets = [t.split('#', 1)[0] for t in re.findall(r'\]\(([^)\s]+)\)', text)
             if not re.match(r'[a-z]+:', t)]
  assert len(targets) > 10, targets
  missing = [t for t in targets if t and not (ROOT / t).exists()]
  assert not missing, missing


def test_the_site_builds_strictly(tmp_path):
  for module in ('mkdocs', 'material', 'mkdocstrings', 'mkdocstrings_handlers.python'):
    pytest.importorskip(module, reason="the docs extra: pip install -e '.[docs]'")
  site = tmp_path / 'site'
  env = {**os.environ, 'NO_MKDOCS_2_WARNING': '1'}
  result = subprocess.run([sys.executable, '-m', 'mkdocs', 'build', '--strict', '--site-dir',
                           str(site)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, check=False)
  assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
  assert (site / 'index.html').is_file()
  reference = (site / 'reference' / 'restorer' / 'index.html').read_text(encoding='utf-8')
  assert 'from_pretrained' in reference  # The API reference was rendered from the docstrings.
