"""Bytes in, bytes out: the tar and zstd walkers and the pack/unpack pipelines of an archive."""
