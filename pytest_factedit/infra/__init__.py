"""The bottom floor: what every layer uses and that knows no layer above it. Progress events (`events.py`)
and files (`files.py`: written atomically with the umask's modes; untrusted ones read as regular files, to a
bound); standard library only."""
