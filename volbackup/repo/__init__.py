"""The repository: snapshots, manifests, locks and retention over a storage backend (backends/)."""
