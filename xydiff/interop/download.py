"""Downloads weight files once into a cache, verified by hash, never half-written.

Pretrained weights (official XYDeblur and DMPHN, the FID Inception network)
are fetched from their authors' URLs. A file is used only once it matches the
full hash its caller pins (a git blob SHA-1 or a sha256; a missing or partial
pin is a programming error), so a changed, truncated or tampered download is
an error rather than a silently different model. It streams into a `.part`
file beside its cache entry, under a total deadline and a size cap, and is
renamed into place only after it verifies. No failure (HTTP error, refused
connection, timeout, a server that trickles bytes, an oversized file, wrong
hash, interrupt) leaves a file or a folder behind, and `.part` files of
downloads that were killed are removed by the next fetch of that file.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import http.client
import os
import re
import socket
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from xydiff import progress
from xydiff.errors import WeightsError

_CHUNK = 1 << 20
DEFAULT_MAX_BYTES = 1 << 30  # Larger than any weights xydiff fetches (Inception: 95 MB).
DEFAULT_DEADLINE_S = 1800.0
# A `.part` nobody holds locked and nobody wrote for this long is a killed download's.
_STALE_PART_S = 60.0
_HEX = {'git_blob_sha1': 40, 'sha256': 64}


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


def check_pin(kind: str, value) -> str:
  """`value` lower-cased if it is a whole hex digest of `kind` ('git_blob_sha1', 'sha256')."""
  digits = _HEX[kind]
  if not (isinstance(value, str) and re.fullmatch(f'[0-9a-fA-F]{{{digits}}}', value)):
    raise ValueError(f'{kind} must be {digits} hex digits, got {value!r}: every download is '
                     'pinned by a whole hash')
  return value.lower()


def _check_url(url: str) -> None:
  """Refuses, in one line naming it, a URL that urllib would fail on with a traceback: not
  http(s), no host, a host that is no domain name (IDNA labels of 1 to 63 characters),
  spaces or control characters, or non-ASCII characters outside its host."""
  shown = url if url.isprintable() else ascii(url)
  if not url.isprintable() or ' ' in url:
    raise WeightsError(f'cannot download {shown}: it holds spaces or control characters; '
                       'percent-encode them (%20)')
  try:
    parts = urllib.parse.urlsplit(url)
    host, _ = parts.hostname, parts.port  # .port raises ValueError for a port out of range.
  except ValueError as e:
    raise WeightsError(f'cannot download {shown}: not a URL ({e})') from None
  if parts.scheme not in ('http', 'https') or not host:
    raise WeightsError(f'cannot download {shown}: not an http:// or https:// URL with a host')
  try:
    ascii_host = host.encode('idna')  # A label empty or over 63 characters fails here.
  except UnicodeError:
    ascii_host = b''
  if not re.fullmatch(rb'[A-Za-z0-9._:-]+', ascii_host):
    raise WeightsError(f'cannot download {shown}: its host {host} is not a domain name (letters, '
                       'digits and hyphens in dot-separated labels of 1 to 63 characters)')
  if not (parts.netloc.rpartition('@')[0] + parts.path + parts.query + parts.fragment).isascii():
    raise WeightsError(f'cannot download {shown}: its path holds non-ASCII characters; '
                       'percent-encode them (%C3%BC)')


def _mismatch(path: str, pins: dict) -> str | None:
  """None if `path` has the pinned hashes, else 'which hash: expected X, got Y'."""
  for kind, expected in pins.items():
    got = git_blob_sha1(path) if kind == 'git_blob_sha1' else sha256(path)
    if got != expected:
      return f'{kind.replace("_", " ")} expected {expected}, got {got}'
  return None


class _Deadline:
  """Shuts every socket a download opened once `seconds` have passed.

  urllib's timeout bounds each socket read, not the download: a server that
  sends a byte every few seconds would never be cut off. Shutting the sockets
  down from a timer ends whatever read is waiting, in the headers or the body.
  """

  def __init__(self, seconds: float):
    self.seconds = seconds
    self.expired = False
    self._sockets = []
    self._lock = threading.Lock()
    self._timer = threading.Timer(seconds, self._expire)
    self._timer.daemon = True

  def __enter__(self):
    self._timer.start()
    return self

  def __exit__(self, *exc):
    self._timer.cancel()

  def watch(self, sock):
    with self._lock:
      self._sockets.append(sock)
      expired = self.expired
    if expired:
      self._shut(sock)
    return sock

  def _expire(self):
    with self._lock:
      self.expired = True
      sockets = list(self._sockets)
    for sock in sockets:
      self._shut(sock)

  @staticmethod
  def _shut(sock):
    try:
      sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # Already closed.
      pass

  def opener(self) -> urllib.request.OpenerDirector:
    """A urllib opener whose connections register their sockets here."""
    deadline = self

    class Watched:
      def do_open(self, http_class, req, **kwargs):  # pylint: disable=invalid-name
        class Connection(http_class):
          def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            create = self._create_connection
            self._create_connection = lambda *a, **k: deadline.watch(create(*a, **k))
        return super().do_open(Connection, req, **kwargs)

    class HTTPHandler(Watched, urllib.request.HTTPHandler):
      pass

    class HTTPSHandler(Watched, urllib.request.HTTPSHandler):
      pass

    return urllib.request.build_opener(HTTPHandler, HTTPSHandler)


def _download(url: str, file, *, timeout: float, deadline_s: float, max_bytes: int,
              what: str = 'download') -> int:
  """Streams `url` into `file`, its bytes counted on a progress bar named `what`; returns the
  byte count. Raises WeightsError naming `url`."""
  size = 0
  with _Deadline(deadline_s) as deadline:
    try:
      with deadline.opener().open(url, timeout=timeout) as response:
        expected = response.headers.get('Content-Length')
        if expected is not None and expected.isdigit() and int(expected) > max_bytes:
          raise WeightsError(f'cannot download {url}: it is {int(expected):,} bytes, more than '
                             f'the {max_bytes:,} expected')
        total = int(expected) if expected is not None and expected.isdigit() else None
        with progress.task(what, total=total, unit='B', unit_scale=True,
                           unit_divisor=1024) as bar:
          while chunk := response.read(_CHUNK):
            size += len(chunk)
            if size > max_bytes:
              raise WeightsError(f'cannot download {url}: more than the {max_bytes:,} bytes '
                                 'expected')
            file.write(chunk)
            bar.update(len(chunk))
    except WeightsError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      if deadline.expired:
        raise WeightsError(f'cannot download {url}: not complete within {deadline_s:g} s '
                           f'({size:,} bytes received)') from None
      raise _download_error(url, e, timeout) from None
    complete = expected is not None and expected.isdigit() and int(expected) == size
    if deadline.expired and not complete:  # The shutdown made the body look complete.
      raise WeightsError(f'cannot download {url}: not complete within {deadline_s:g} s '
                         f'({size:,} bytes received)')
  if expected is not None and expected.isdigit() and int(expected) != size:
    raise WeightsError(f'cannot download {url}: got {size} of {expected} bytes')
  return size


def _download_error(url: str, error: BaseException, timeout: float) -> BaseException:
  if isinstance(error, urllib.error.HTTPError):
    return WeightsError(f'cannot download {url}: HTTP {error.code} {error.reason}')
  if isinstance(error, urllib.error.URLError):
    reason = error.reason
    if isinstance(reason, (TimeoutError, socket.timeout)):
      reason = f'no answer within {timeout:g} s'
    return WeightsError(f'cannot download {url}: {reason}')
  if isinstance(error, (TimeoutError, socket.timeout)):
    return WeightsError(f'cannot download {url}: no answer within {timeout:g} s')
  if isinstance(error, (http.client.HTTPException, ConnectionError)):
    return WeightsError(f'cannot download {url}: the connection broke '
                        f'({type(error).__name__}: {" ".join(str(error).split())[:200]})')
  if isinstance(error, OSError):  # Socket errors mid-stream, or the cache's disk while writing.
    return WeightsError(f'cannot download {url}: {error.strerror or error}')
  if isinstance(error, ValueError):  # urllib refusing a URL that _check_url let through.
    return WeightsError(f'cannot download {url}: {" ".join(str(error).split())[:200]}')
  return error


def _remove_stale_parts(folder: str, filename: str) -> None:
  """Removes `.part` files of `filename` left by killed downloads.

  A live download holds its `.part` locked (flock); one nobody holds and
  nobody wrote for a minute belongs to a process that is gone.
  """
  try:
    names = os.listdir(folder)
  except OSError:
    return
  for name in names:
    if not (name.startswith(f'.{filename}.') and name.endswith('.part')):
      continue
    path = os.path.join(folder, name)
    try:
      fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
      continue
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      if time.time() - os.fstat(fd).st_mtime > _STALE_PART_S:
        os.remove(path)
    except OSError:  # Locked by a live download, or no locks here: leave it.
      pass
    finally:
      os.close(fd)


def _missing_folders(folder: str) -> list[str]:
  """`folder` and those of its parents that do not exist yet, deepest first."""
  missing = []
  while folder and not os.path.isdir(folder):
    missing.append(folder)
    parent = os.path.dirname(folder)
    if parent == folder:
      break
    folder = parent
  return missing


def fetch(url: str, filename: str, *, git_blob_sha1: str | None = None,
          sha256: str | None = None, cache: str | None = None,  # pylint: disable=redefined-outer-name
          timeout: float = 60.0, deadline: float = DEFAULT_DEADLINE_S,
          max_bytes: int = DEFAULT_MAX_BYTES) -> str:
  """The path of `filename` in the cache, downloaded from `url` unless already there.

  The file must match `git_blob_sha1` (git's id of the file, as GitHub shows
  it, 40 hex digits) and/or `sha256` (64 hex digits); at least one is
  required, and a missing or partial pin raises ValueError (a programming
  error: nothing is fetched unverified). `timeout` bounds each wait for the
  server, `deadline` the whole download, `max_bytes` its size. A cached file
  that verifies is used as is; one that does not (damaged, or an older
  version) is downloaded again. Any failure raises WeightsError in one line
  naming `url` and leaves nothing behind: no `.part` file, and no folder
  this call made (the cache folder and its parents included); a URL that is
  not http(s), or whose host is no domain name, is refused before anything.
  """
  pins = {}
  for kind, value in (('git_blob_sha1', git_blob_sha1), ('sha256', sha256)):
    if value is not None:
      pins[kind] = check_pin(kind, value)
  if not pins:
    raise ValueError(f'fetch({url!r}) needs git_blob_sha1 or sha256 to verify it')
  if not filename or os.path.basename(filename) != filename or filename in ('.', '..'):
    raise ValueError(f'filename {filename!r} must be a plain file name')
  _check_url(url)
  folder = os.path.abspath(cache or cache_dir())
  path = os.path.join(folder, filename)
  _remove_stale_parts(folder, filename)
  if os.path.isfile(path):
    if _mismatch(path, pins) is None:
      return path
    print(f'{path} does not match its expected hash; downloading it again', file=sys.stderr)
  made = _missing_folders(folder)
  temporary = None
  try:
    os.makedirs(folder, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=f'.{filename}.', suffix='.part',
                                     delete=False) as file:
      temporary = file.name
      try:  # Held while downloading: the next fetch leaves a live download's .part alone.
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
          raise
      print(f'downloading {url}', file=sys.stderr)
      _download(url, file, timeout=timeout, deadline_s=deadline, max_bytes=max_bytes,
                what=filename)
    problem = _mismatch(temporary, pins)
    if problem is not None:
      raise WeightsError(f'{url} is not the expected file ({problem}); nothing was kept')
    os.replace(temporary, path)
    temporary = None
    made = []
  except OSError as e:  # The cache folder itself: no permission, full disk.
    raise WeightsError(f'cannot save {url} in {folder}: {e.strerror or e}') from None
  finally:
    if temporary is not None and os.path.exists(temporary):
      os.remove(temporary)
    for made_folder in made:  # Deepest first; a folder someone else filled meanwhile stays.
      try:
        os.rmdir(made_folder)
      except OSError:
        break
  return path
