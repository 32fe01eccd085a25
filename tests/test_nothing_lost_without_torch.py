"""Tests that never use torch run without it: a module-level importorskip would skip them.

The audit found the hostile-pickle, hash, cache and download-failure tests
and the KID maths skipped wherever torch is absent (the install without the
test extra, the accelerator image). Here a fresh pytest runs a sample of
them with `import torch` made to fail, and each must pass, not skip.
"""

import re
import subprocess
import sys
import textwrap

from conftest import REPO

# {test file: the tests of it that must pass without torch}.
TORCH_FREE = {
    'tests/test_torch_pickle.py': [
        'test_a_checkpoint_that_would_run_code_is_refused[zip]',
        'test_build_cannot_change_a_class_or_function[target0]',
        'test_shared_containers_are_built_once',
        'test_what_a_file_makes_is_capped[legacy]',
        'test_zip_entries_are_checked_before_they_are_read',
    ],
    'tests/test_fetch_weights.py': [
        'test_git_blob_sha1_and_sha256_are_git_and_hashlib_digests',
        'test_cache_dir_follows_the_environment',
        'test_every_download_needs_a_whole_hash',
        'test_download_failures_are_one_line_naming_the_url_and_keep_nothing',
        'test_a_wrong_hash_keeps_nothing_and_names_both_hashes',
    ],
    'tests/test_fid.py': [
        'test_kid_matches_torch_fidelity_and_clean_fid[True]',
        'test_accumulating_in_chunks_equals_all_at_once',
        'test_fetch_pins_the_whole_hash_and_a_failed_fetch_turns_the_metric_off',
    ],
    'tests/test_lpips.py': [
        'test_the_trunk_is_the_pinned_file',
        'test_loader_refuses_code',
    ],
}


def test_torch_free_tests_pass_with_torch_unimportable():
  ids = [f'{path}::{name}' for path, names in TORCH_FREE.items() for name in names]
  script = textwrap.dedent(f'''
      import sys
      sys.modules['torch'] = None  # `import torch` now raises ImportError.
      import pytest
      sys.exit(pytest.main(['-q', '-rA', '-p', 'no:cacheprovider', *{ids!r}]))
  ''')
  result = subprocess.run([sys.executable, '-c', script], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
  passed = set(re.findall(r'^PASSED (\S+)', result.stdout, re.MULTILINE))
  assert passed == set(ids), sorted(set(ids) - passed)
