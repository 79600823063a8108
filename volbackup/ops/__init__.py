"""The library API: one module per operation, each returning typed results.

Nothing here imports click; commands in volbackup.cli call these and render the result.
"""
