"""pkvm-sim: a discrete-event simulator of the pKVM trust boundary around the vGIC ITS."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pkvm-sim")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
