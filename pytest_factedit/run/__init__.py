"""Running cases on a loaded model: the options of a run (`options.py`), probing (`probing.py`), the
isolated-case protocol (`case.py`), sequential and batch editing (`many.py`), and their outcomes
(`outcome.py`). Torch loads only when a case runs."""
