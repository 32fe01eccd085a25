"""Downloads weight files once into a cache, verified by hash, never half-written.

Pretrained weights (official XYDeblur, the FID Inception network) are fetched
from their authors' URLs. A file is used only once it matches the hash its
caller pins, so a changed, truncated or tampered download is an error rather
than a silently different model; it is written to a temporary file beside
its cache entry and moved into place only after it verifies, so no failure
(HTTP error, refused connection, timeout, wrong hash, interrupt) leaves a
partial or unverified file behind.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import sys
import tempfile
import urllib.error
import urllib.request

from xydiff.errors import WeightsError

_CHUNK = 1 << 20


def cache_dir() -> str:
  """$XYDIFF_CACHE, else $XDG_CACHE_HOME/xydiff, else ~/.cache/xydiff."""
  if os.environ.get('XYDIFF_CACHE'):
    return os.environ['XYDIFF_CACHE']
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'xydiff')


def _chunks(path: str):
  with open(path, 'rb') as f:
    while chunk := f.read(_CHUNK):
      yield chunk


def git_blob_sha1(path: str) -> str:
  """What `git hash-object` prints for the file: the id GitHub lists a committed file under."""
  digest = hashlib.sha1(b'blob %d\0' % os.path.getsize(path))
  for chunk in _chunks(path):
    digest.update(chunk)
  return digest.hexdigest()


def sha256(path: str) -> str:
  digest = hashlib.sha256()
  for chunk in _chunks(path):
    digest.update(chunk)
  return digest.hexdigest()


def _mismatch(path: str, blob_sha1: str | None, sha256_prefix: str | None) -> str | None:
  """None if `path` has the pinned hashes, else 'which hash: expected X, got Y'."""
  if blob_sha1 is not None:
    got = git_blob_sha1(path)
    if got != blob_sha1.lower():
      return f'git blob sha1 expected {blob_sha1}, got {got}'
  if sha256_prefix is not None:
    got = sha256(path)
    if not got.startswith(sha256_prefix.lower()):
      return f'sha256 expected {sha256_prefix}..., got {got}'
  return None


def _download(url: str, file, timeout: float) -> int:
  """Streams `url` into `file`; returns the byte count. Raises WeightsError naming `url`."""
  try:
    with urllib.request.urlopen(url, timeout=timeout) as response:
      expected = response.headers.get('Content-Length')
      size = 0
      while chunk := response.read(_CHUNK):
        file.write(chunk)
        size += len(chunk)
  except urllib.error.HTTPError as e:
    raise WeightsError(f'cannot download {url}: HTTP {e.code} {e.reason}') from None
  except urllib.error.URLError as e:
    reason = e.reason
    if isinstance(reason, (TimeoutError, socket.timeout)):
      reason = f'no answer within {timeout:g} s'
    raise WeightsError(f'cannot download {url}: {reason}') from None
  except (TimeoutError, socket.timeout):
    raise WeightsError(f'cannot download {url}: no answer within {timeout:g} s') from None
  except (http.client.HTTPException, ConnectionError) as e:
    raise WeightsError(f'cannot download {url}: the connection broke '
                       f'({type(e).__name__}: {" ".join(str(e).split())[:200]})') from None
  except OSError as e:  # Socket errors mid-stream, or the cache's disk while writing.
    raise WeightsError(f'cannot download {url}: {e.strerror or e}') from None
  if expected is not None and expected.isdigit() and int(expected) != size:
    raise WeightsError(f'cannot download {url}: got {size} of {expected} bytes')
  return size


def fetch(url: str, filename: str, *, git_blob_sha1: str | None = None,
          sha256_prefix: str | None = None, cache: str | None = None,
          timeout: float = 60.0) -> str:
  """The path of `filename` in the cache, downloaded from `url` unless already there.

  The file must match `git_blob_sha1` (git's id of the file, as GitHub shows
  it) and/or `sha256_prefix` (torch.hub's convention: the hex digits after
  the last '-' of a name like pt_inception-2015-12-05-6726825d.pth start its
  sha256); at least one is required. A cached file that verifies is used as
  is; one that does not (damaged, or an older version) is deleted and
  downloaded again. Any failure raises WeightsError in one line naming `url`
  and leaves nothing in the cache (not even the folder, if this call made it).
  """
  if git_blob_sha1 is None and sha256_prefix is None:
    raise ValueError(f'fetch({url!r}) needs git_blob_sha1 or sha256_prefix to verify it')
  if not filename or os.path.basename(filename) != filename or filename in ('.', '..'):
    raise ValueError(f'filename {filename!r} must be a plain file name')
  folder = cache or cache_dir()
  path = os.path.join(folder, filename)
  if os.path.isfile(path):
    if _mismatch(path, git_blob_sha1, sha256_prefix) is None:
      return path
    print(f'{path} does not match its expected hash; downloading it again', file=sys.stderr)
    os.remove(path)
  made_folder = not os.path.isdir(folder)
  temporary = None
  try:
    os.makedirs(folder, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=f'.{filename}.', suffix='.part',
                                     delete=False) as file:
      temporary = file.name
      print(f'downloading {url}', file=sys.stderr)
      _download(url, file, timeout)
    problem = _mismatch(temporary, git_blob_sha1, sha256_prefix)
    if problem is not None:
      raise WeightsError(f'{url} is not the expected file ({problem}); nothing was kept')
    os.replace(temporary, path)
    temporary = None
  except OSError as e:  # The cache folder itself: no permission, full disk.
    raise WeightsError(f'cannot save {url} in {folder}: {e.strerror or e}') from None
  finally:
    if temporary is not None and os.path.exists(temporary):
      os.remove(temporary)
    if made_folder and os.path.isdir(folder) and not os.listdir(folder):
      os.rmdir(folder)
  return path
