"""Experiments: scripts a researcher runs and reads, each ``python -m experiments.<name>``.

Each module's docstring holds its command, the question it answers and its outputs; shared
helpers live in ``common`` (configs, resumable runs, tables) and ``machine`` (what ran them).
"""
