"""resizer: square images in, 64x64 and 32x32 out, through a Redis queue that never loses a task."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("resizer")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
