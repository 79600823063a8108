"""The only package that imports the docker SDK: the engine (volumes, containers, helpers)
and the direct path (host GNU tar on directories proved to be the engine's own)."""
