"""What checking the base model after every case costs: the whole-model checksum (exact: 64-bit integer
row sums of every tensor's bytes, hashed) beside a sha256 of every weight and the float sum of each tensor
it replaced (which missed small changes), on the embedded model (docs/security.md, "The base model stays
the base model").

    OMP_NUM_THREADS=1 python bench/restore_check.py            # median of 7 runs each
    python bench/restore_check.py --repeats 3 --model /path/to/model
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable


def median_seconds(works: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Each work's median time; the works take turns in every round, so a busy spell slows them all alike."""
    times: dict[str, list[float]] = {name: [] for name in works}
    for _ in range(repeats):
        for name, work in works.items():
            start = time.perf_counter()
            work()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(spent) for name, spent in times.items()}


def float_sums(model) -> tuple[float, ...]:
    """The check this one replaced: each tensor's sum in its own dtype (a 1e-5 change to one fp32 weight
    left it as it was)."""
    return tuple(float(t.detach().sum()) for t in list(model.parameters()) + list(model.buffers()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a model folder or name (default: the embedded model)")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    import torch

    from pytest_factedit.model.load import load
    from pytest_factedit.model.weights import weights_checksum, weights_fingerprint

    lm = load(args.model, device="cpu")
    size = sum(t.numel() * t.element_size() for t in list(lm.model.parameters()) + list(lm.model.buffers()))
    works = {
        "checksum": lambda: weights_checksum(lm.model),
        "sha256": lambda: weights_fingerprint(lm.model),
        "floats": lambda: float_sums(lm.model),
    }
    seconds = median_seconds(works, args.repeats)
    checksum, sha256, floats = seconds["checksum"], seconds["sha256"], seconds["floats"]
    print(f"model: {lm.spec.name} on cpu, {size / 1e9:.2f} GB of weights, torch threads {torch.get_num_threads()}")
    print(f"exact checksum, integer row sums (weights_checksum): {checksum * 1000:8.1f} ms  (median of {args.repeats})")
    print(f"sha256 of every weight (weights_fingerprint):       {sha256 * 1000:8.1f} ms")
    print(f"float sum of each tensor (the inexact old check):    {floats * 1000:8.1f} ms")
    print(f"the checksum takes {checksum / sha256:.3f} x the sha256's time, {checksum / floats:.2f} x the float sum's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
