"""What checking the base model after every case costs: the whole-model checksum beside a sha256 of
every weight, on the embedded model (docs/security.md, "The base model stays the base model").

    OMP_NUM_THREADS=1 python bench/restore_check.py            # median of 7 runs each
    python bench/restore_check.py --repeats 3 --model /path/to/model
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def median_seconds(work, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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
    checksum = median_seconds(lambda: weights_checksum(lm.model), args.repeats)
    sha256 = median_seconds(lambda: weights_fingerprint(lm.model), args.repeats)
    print(f"model: {lm.spec.name} on cpu, {size / 1e9:.2f} GB of weights, torch threads {torch.get_num_threads()}")
    print(f"whole-model checksum (weights_checksum):   {checksum * 1000:8.1f} ms  (median of {args.repeats})")
    print(f"sha256 of every weight (weights_fingerprint): {sha256 * 1000:8.1f} ms  (median of {args.repeats})")
    print(f"ratio: the checksum takes {checksum / sha256:.3f} x the sha256's time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
