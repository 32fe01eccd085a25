"""Every error a user's input can cause, in one leaf module.

Each names the flag, field, file or folder at fault in a one-line message;
`launch.py` and the tools print that line instead of a traceback for any
error in `USER_ERRORS`.
"""

from __future__ import annotations


class ConfigError(ValueError):
  """A config field (or flag) holds a value xydiff cannot use."""


class DataError(ValueError):
  """The user's data is not what the config says; the message names the path."""


class ImageReadError(ValueError):
  """An image file could not be decoded; the message names the file."""


class ImageValueError(ValueError):
  """An image array's dtype, shape or values are not an image xydiff can restore."""


class CheckpointMismatchError(ValueError):
  """The checkpoint on disk was written for a different model or config."""


class CheckpointReadError(ValueError):
  """A checkpoint on disk cannot be read (permissions, a missing file, I/O, or damage);
  the message names its folder and the error."""


class CheckpointDamagedError(CheckpointReadError):
  """A checkpoint's files are damaged (truncated, corrupt, undecodable): training sets it aside."""


class CheckpointImportError(ValueError):
  """A PyTorch checkpoint cannot become this config's model; the message says why."""


class WeightsError(ValueError):
  """Weights could not be downloaded, verified or read; the message names the URL or file."""


class WorkdirInUseError(RuntimeError):
  """Another run holds the workdir's lock."""


class LinkedFileError(PermissionError):
  """A file xydiff creates or writes in place (workdir lock, write probe, temporary) is a
  symbolic or hard link, or not a regular file: refused, what it points to left untouched."""


class NonFiniteLossError(FloatingPointError):
  """Training produced a non-finite loss, gradient or parameter."""


# Errors caused by the user's input (flags, files, workdir): entry points print
# their one-line message instead of a traceback.
USER_ERRORS = (ConfigError, DataError, ImageReadError, ImageValueError, CheckpointMismatchError,
               CheckpointReadError, CheckpointImportError, WeightsError, WorkdirInUseError,
               FileNotFoundError, PermissionError, FloatingPointError)


class ExportWriteError(WeightsError):
  """An export could not be written (a full disk, a read-only folder): the message names the
  file and the system's error; nothing was written under its name. A WeightsError, so it is
  one of USER_ERRORS."""


def require(ok: bool, field: str, message: str, value) -> None:
  """Raises ConfigError('config.<field>=<value>: <message>') unless `ok`."""
  if not ok:
    raise ConfigError(f'config.{field}={value!r}: {message}')


class ImageTooLargeError(ImageReadError, ImageValueError):
  """An image, a file or an array, has more pixels than max_megapixels allows: refused from
  its header or shape before any decoding or restoring; the message names the file, its size
  and the flag or field that sets the limit. Both an ImageReadError and an ImageValueError, so
  a handler of either catches it (and both are USER_ERRORS)."""


class NonFiniteOutputError(FloatingPointError):
  """A model restored an image to NaN or infinite values (damaged or diverged weights, or an
  activation dtype too narrow for them): reported, never saved as a black image. A
  FloatingPointError, so it is one of USER_ERRORS."""


class CheckpointWriteError(OSError):
  """A checkpoint step could not be saved (a full disk, a folder that refuses writes); the
  message names the step, the checkpoints folder and the system's error, and nothing of the
  step is left that a later restore could take for a good one."""


USER_ERRORS += (CheckpointWriteError,)
