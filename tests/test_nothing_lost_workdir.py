"""Files xydiff makes in a workdir follow no link, and the lock says what it cannot see.

The audit: a `.lock` symlink to another file had that file truncated and the
pid written into it; the write probe and the atomic-write temporaries did
the same; on NFS with local_lock, or on FUSE, flock succeeded and refused
nothing across hosts, silently.
"""

import logging
import os

import pytest

from xydiff import files
from xydiff.cli import common as cli
from xydiff.runs import workdir
from xydiff.errors import LinkedFileError, USER_ERRORS

SECRET = b'someone else\'s file\n'


@pytest.fixture
def target(tmp_path):
  path = tmp_path / 'elsewhere.txt'
  path.write_bytes(SECRET)
  return path


def _refused(error, path):
  message = cli.one_line(error)
  assert isinstance(error, USER_ERRORS) and '\n' not in message
  assert message.startswith(f'{path} (') and 'refused' in message


def test_a_symlinked_lock_is_refused_and_its_target_untouched(tmp_path, target):
  run = tmp_path / 'run'
  run.mkdir()
  (run / '.lock').symlink_to(target)
  with pytest.raises(LinkedFileError) as e:
    with workdir.lock(str(run)):
      pass
  _refused(e.value, run / '.lock')
  assert 'a symbolic link to' in str(e.value)
  assert target.read_bytes() == SECRET
  os.remove(run / '.lock')
  os.link(target, run / '.lock')  # A hard link writes the same file just as well.
  with pytest.raises(LinkedFileError, match='a hard link'):
    with workdir.lock(str(run)):
      pass
  assert target.read_bytes() == SECRET
  os.remove(run / '.lock')
  with workdir.lock(str(run)):  # Its own file: made, locked, and the holder written.
    assert (run / '.lock').read_text().startswith(f'pid {os.getpid()} on ')


def test_the_write_probe_is_refused_through_a_link(tmp_path, target):
  run = tmp_path / 'run'
  run.mkdir()
  (run / '.write_probe_0').symlink_to(target)
  with pytest.raises(LinkedFileError) as e:
    workdir.check_writable(str(run))
  _refused(e.value, run / '.write_probe_0')
  assert target.read_bytes() == SECRET
  os.remove(run / '.write_probe_0')
  (run / '.write_probe_0').write_text('left by a killed run')  # A plain leftover is replaced.
  workdir.check_writable(str(run))
  assert os.listdir(run) == []


def test_atomic_writes_follow_no_link(tmp_path, target):
  out = tmp_path / 'report.json'
  tmp = tmp_path / f'report.json.tmp-{os.getpid()}'
  tmp.symlink_to(target)
  with pytest.raises(LinkedFileError) as e:
    files.write_atomic(str(out), '{"a": 1}')
  _refused(e.value, tmp)
  with pytest.raises(LinkedFileError):
    with files.atomic_path(str(out)) as path:
      raise AssertionError(f'never yielded {path}')
  assert target.read_bytes() == SECRET and not out.exists()
  os.remove(tmp)
  os.link(target, tmp)
  with pytest.raises(LinkedFileError, match='a hard link'):
    files.write_atomic(str(out), '{"a": 1}')
  assert target.read_bytes() == SECRET
  os.remove(tmp)
  tmp.write_text('half a report from a killed run')
  files.write_atomic(str(out), '{"a": 1}')
  assert out.read_text() == '{"a": 1}' and not tmp.exists()
  # The destination a link: replaced by the file, the link's target untouched.
  os.remove(out)
  out.symlink_to(target)
  files.write_atomic(str(out), b'new')
  assert not out.is_symlink() and out.read_bytes() == b'new' and target.read_bytes() == SECRET


MOUNTS = '''\
/dev/sda1 / ext4 rw,relatime 0 0
server:/export /mnt/nfs nfs4 rw,vers=4.2,local_lock=none,addr=10.0.0.2 0 0
server:/local /mnt/local nfs rw,vers=3,local_lock=flock,addr=10.0.0.2 0 0
bucket /mnt/gcs fuse.gcsfuse rw,nosuid,nodev,user_id=0,group_id=0 0 0
server:/export/shared /mnt/nfs/my\\040runs nfs4 rw,local_lock=all 0 0
'''


def test_host_local_locks_are_named_from_the_mount_table(tmp_path, monkeypatch):
  table = tmp_path / 'mounts'
  table.write_text(MOUNTS)
  monkeypatch.setattr(workdir, '_MOUNTS', str(table))
  assert workdir.host_local_locks('/home/me/runs') is None  # ext4: the lock is the kernel's.
  assert workdir.host_local_locks('/mnt/nfs/runs/a') is None  # NFS locks go to the server.
  assert workdir.host_local_locks('/mnt/local/run') == (
      '/mnt/local is NFS (server:/local) mounted with local_lock=flock')
  assert workdir.host_local_locks('/mnt/gcs/run') == (
      '/mnt/gcs is a FUSE filesystem (fuse.gcsfuse, bucket)')
  assert workdir.host_local_locks('/mnt/nfs/my runs/x') == (  # The longest mount point wins.
      '/mnt/nfs/my runs is NFS (server:/export/shared) mounted with local_lock=all')
  monkeypatch.setattr(workdir, '_MOUNTS', str(tmp_path / 'no such table'))
  assert workdir.host_local_locks('/mnt/local/run') is None


def test_a_lock_that_only_this_host_sees_is_said_so(tmp_path, monkeypatch, caplog):
  run = tmp_path / 'run'
  run.mkdir()
  table = tmp_path / 'mounts'
  table.write_text(f'bucket {tmp_path} fuse.gcsfuse rw 0 0\n')
  monkeypatch.setattr(workdir, '_MOUNTS', str(table))
  with caplog.at_level(logging.WARNING):
    with workdir.lock(str(run)):
      pass
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 1 and 'keeps out a second run on this host only' in warnings[0]
  assert f'{tmp_path} is a FUSE filesystem (fuse.gcsfuse, bucket)' in warnings[0]
