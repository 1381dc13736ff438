"""Version numbers recorded in every cache file and results row."""

__version__ = "0.1.0"

#: Bumped whenever the HDF5 layout or what a feature means changes; part of every cache key.
CACHE_FORMAT = 1

#: Bumped whenever a probe's numbers could change for the same inputs; stored in every results row.
PROBE_VERSION = "0.1.0"
