"""The model layer: what `--model` names (`spec.py`), the embedded GGUF (`embedded.py`), loading (`load.py`),
architecture tables and edit targets (`arch.py`, `targets.py`), prompts as tokens (`text.py`), probes
(`probe.py`), the LM head (`lmhead.py`), precision (`precision.py`) and weight guards (`weights.py`).

Importing it does not import torch or transformers; the functions that need them import them when called.
"""
