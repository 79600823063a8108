"""`volbackup run` and `backup --prune`: TOML jobs, lock, back up, prune, report. Sits above
ops (it imports ops, never the reverse).
"""
