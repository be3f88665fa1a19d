"""What the operating system says about the CPU: a field of Linux's `/proc/cpuinfo`."""

from __future__ import annotations

from pathlib import Path


def cpuinfo_field(key: str, cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """The first value of `key` ("model name", "vendor_id") in `cpuinfo`; None where the file or key is missing
    (not Linux, or a CPU whose kernel does not name it)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == key:
            return value.strip()
    return None
