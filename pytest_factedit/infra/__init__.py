"""The bottom floor: what every layer uses and that knows no layer above it. Progress events (`events.py`)
and files written atomically with the umask's modes (`files.py`); standard library only."""
