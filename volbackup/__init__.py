"""volbackup: back up, restore and migrate Docker volumes as zstd-compressed tar archives."""

__version__ = "0.1.0"
