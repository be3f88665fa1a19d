"""The bottom floor: what every layer uses and that knows no layer above it. Progress events (`events.py`),
files (`files.py`: written atomically with the umask's modes; untrusted ones read as regular files, to a
bound) and the CPU's `/proc/cpuinfo` fields (`cpu.py`); standard library only."""
