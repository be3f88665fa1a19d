"""The edited probe against its floor: what each of its passes must read and compute, at this machine's
memory bandwidth and fp32 peak, beside what it takes.

    python bench/probe_floor.py                                   # norway-capital and germany-capital
    python bench/probe_floor.py --cases fact_cases/kenya-continent.yaml
    ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 FBGEMM_ENABLE_INSTRUCTIONS=AVX2 \
        python bench/probe_floor.py

The machine first: the read bandwidth (a sum over 512 MB, on the run's threads and on one, as the timed
latency steps run) and the fp32 peak (a prefill-shaped product, 512 x 640 by 640 x 2048). Then each case is
run as the plugin runs it, twice (the first fills what the second reads from the cache, as a warm suite
does), and the second's edited probe is measured pass by pass through hooks on the decoder: the prefill, the
candidates' teacher-forced pass, the greedy steps, and the latency figure's timed steps (one thread).

A pass's floor is the longer of reading its weights once (every decoder weight but the embedding, whose rows
are looked up) and its products at the peak (2 x weights x real tokens: padding is not counted). The LM head
is timed as what is left of the probe after the decoder passes (its products, the argmax, the rest of the
Python); its floor is one read of the head per greedy step (a screen's 2 bytes per weight: bf16 where the
CPU has bf16 units, else fp16 where fbgemm runs, which the greedy steps of a probe's few rows take; else
fp32), one on a timed step, and the prefill's and candidates' head products. The floor is what no
arrangement of the same passes can beat on this machine; how far above it each part runs says where time
can still be won without computing less.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from head_slices import median_seconds

CASES = Path(__file__).resolve().parents[1] / "fact_cases"
TARGET_SECONDS = 1.5
TIMED = "timed steps (one thread)"  # the latency figure's steps
PASS_KINDS = ("prefill", "candidates", "greedy steps", TIMED)


@dataclass(frozen=True)
class Machine:
    """Read bandwidth on the run's threads and on one (bytes/s), and the fp32 peak (flop/s)."""

    bandwidth: float
    bandwidth_one_thread: float
    peak: float


@dataclass
class Passes:
    """Per kind of decoder pass: how many, their seconds, and the real tokens they held."""

    count: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, seconds: float, tokens: int, rows: int) -> None:
        for table, value in ((self.count, 1), (self.seconds, seconds), (self.tokens, tokens), (self.rows, rows)):
            table[kind] = table.get(kind, 0) + value


def measure_machine() -> Machine:
    """The bandwidth and peak a probe's passes meet."""
    import torch

    from pytest_factedit.model.decoding import one_thread

    values = torch.ones(128 * 1024 * 1024)  # 512 MB: far past every cache
    bandwidth = values.numel() * 4 / median_seconds(values.sum, 9)
    with one_thread():  # as the timed latency steps run
        bandwidth_one = values.numel() * 4 / median_seconds(values.sum, 5)
    x, w = torch.randn(512, 640), torch.randn(2048, 640)
    peak = 2 * 512 * 640 * 2048 / median_seconds(lambda: torch.nn.functional.linear(x, w), 21)
    return Machine(bandwidth, bandwidth_one, peak)


def pass_kind(ids: Any, phase: str | None) -> str:
    """Which of a probe's passes this is: the phase it runs in (`phase_flag`), else a prefill (many tokens a
    row) or a greedy step (one)."""
    if phase is not None:
        return phase
    return "prefill" if ids.shape[1] > 1 else "greedy steps"


@contextmanager
def phase_flag() -> Iterator[list[str | None]]:
    """[the kind of pass running]: "candidates" inside the candidates' teacher-forced pass, TIMED inside a
    timed step's one-thread block, else None; by the thread count it could not be told from a greedy step
    where torch runs one thread anyway. Both functions restored in `finally`."""
    from pytest_factedit.model import decoding

    phase: list[str | None] = [None]
    teacher_forced, one_thread = decoding._teacher_forced, decoding.one_thread

    def scoring(*args: Any, **kwargs: Any) -> Any:
        phase[0] = "candidates"
        try:
            return teacher_forced(*args, **kwargs)
        finally:
            phase[0] = None

    @contextmanager
    def timed() -> Iterator[None]:
        phase[0] = TIMED
        try:
            with one_thread():
                yield
        finally:
            phase[0] = None

    decoding._teacher_forced, decoding.one_thread = scoring, timed
    try:
        yield phase
    finally:
        decoding._teacher_forced, decoding.one_thread = teacher_forced, one_thread


@contextmanager
def timed_passes(model: Any, passes: Passes) -> Iterator[None]:
    """Every decoder pass in the block timed and sorted by kind (hooks removed in `finally`)."""
    from pytest_factedit.model.lmhead import decoder

    body = decoder(model)
    open_pass: list[Any] = []

    def before(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        real = int(mask[:, -ids.shape[1] :].sum()) if mask is not None else ids.numel()
        open_pass[:] = [pass_kind(ids, phase[0]), real, ids.shape[0], time.thread_time(), time.perf_counter()]

    def after(_module: Any, _args: Any, _output: Any) -> None:
        kind, real, rows, cpu, wall = open_pass
        # the plugin counts a timed step's CPU time
        passes.add(kind, time.thread_time() - cpu if kind == TIMED else time.perf_counter() - wall, real, rows)

    handles = [
        body.register_forward_pre_hook(before, with_kwargs=True, prepend=True),
        body.register_forward_hook(after),
    ]
    try:
        with phase_flag() as phase:
            yield
    finally:
        for handle in handles:
            handle.remove()


def weight_bytes(model: Any) -> tuple[int, int, int]:
    """(decoder weights read by a pass, in bytes; their parameters; the head's vocabulary x width)."""
    import torch

    from pytest_factedit.model.lmhead import decoder

    skip = {id(p) for m in decoder(model).modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    params = [p for p in decoder(model).parameters() if id(p) not in skip]
    head = model.get_output_embeddings().weight
    return sum(p.numel() * p.element_size() for p in params), sum(p.numel() for p in params), head.numel()


def floors(model: Any, passes: Passes, machine: Machine, screened: bool) -> dict[str, float]:
    """The floor of each kind of pass, and of the head's part of the probe."""
    read, params, head = weight_bytes(model)
    out = {}
    for kind, count in passes.count.items():
        bandwidth = machine.bandwidth_one_thread if kind == TIMED else machine.bandwidth
        out[kind] = max(count * read / bandwidth, 2 * params * passes.tokens[kind] / machine.peak)
    step_head = head * (2 if screened else 4)  # bytes a greedy step's head reads: a bf16 or fp16 screen, else fp32
    reads = passes.count.get("greedy steps", 0) * step_head / machine.bandwidth
    if TIMED in out:  # the head timed once, on one thread
        reads += step_head / machine.bandwidth_one_thread
    many = passes.rows.get("prefill", 0) + passes.tokens.get("candidates", 0)  # positions whose logits a pass wants
    out["heads, argmax and the rest"] = reads + max(4 * head / machine.bandwidth, 2 * head * many / machine.peak)
    return out


def probe_case(lm: Any, path: Path, cache: Any) -> tuple[Passes, float]:
    """Run the case twice; the second run's edited probe, pass by pass, and its seconds."""
    import pytest_factedit.run.case as case_module
    from pytest_factedit.cases import load_case
    from pytest_factedit.edit import resolve_settings

    case = load_case(path, root=path.parent)
    settings = resolve_settings(case.method)
    case_module.run_case(lm, case, settings, cache)
    passes = Passes()
    probe_edit = case_module.probe_edit

    def measured(*args: Any, **kwargs: Any) -> None:
        with timed_passes(lm.model, passes):
            probe_edit(*args, **kwargs)

    case_module.probe_edit = measured
    try:
        outcome = case_module.run_case(lm, case, settings, cache)
    finally:
        case_module.probe_edit = probe_edit
    return passes, outcome.timings["probe_seconds"]


def print_case(name: str, passes: Passes, seconds: float, floor: dict[str, float]) -> None:
    """One case's table: each part measured, its floor, and the ratio."""
    print(f"\n{name}: the edited probe\n")
    print("| part | passes | tokens | measured s | floor s | measured / floor |")
    print("|---|---:|---:|---:|---:|---:|")
    decoder = 0.0
    for kind in PASS_KINDS:
        if kind in passes.count:
            decoder += passes.seconds[kind]
            cells = (passes.count[kind], passes.tokens[kind], passes.seconds[kind], floor[kind])
            print(f"| {kind} | {cells[0]} | {cells[1]} | {cells[2]:.3f} | {cells[3]:.3f} | {cells[2] / cells[3]:.1f} |")
    rest, rest_floor = seconds - decoder, floor["heads, argmax and the rest"]
    print(f"| heads, argmax and the rest | | | {rest:.3f} | {rest_floor:.3f} | {rest / rest_floor:.1f} |")
    total = sum(floor.values())
    met = "under" if total <= TARGET_SECONDS else "over"
    floor_cell = f"**{total:.3f}** ({met} the {TARGET_SECONDS} s target)"
    print(f"| **the edited probe** | | | **{seconds:.3f}** | {floor_cell} | {seconds / total:.1f} |")


def print_machine(model: Any, machine: Machine, units: str | None) -> None:
    """The CPU, its bandwidth and peak, and what a pass reads."""
    import torch

    from pytest_factedit.run.model_holder import machine_info

    read, params, head = weight_bytes(model)
    info = machine_info()
    cpu, capability, threads = info["cpu"], info["cpu_capability"], torch.get_num_threads()
    print(f"CPU {cpu}: capability {capability}, bf16 units: {units or 'none'}; {threads} threads")
    both, one, peak = machine.bandwidth / 1e9, machine.bandwidth_one_thread / 1e9, machine.peak / 1e9
    print(f"read bandwidth {both:.1f} GB/s ({one:.1f} on one thread); fp32 peak {peak:.0f} GFLOP/s")
    print(f"decoder weights a pass reads: {read / 1e6:.0f} MB ({params / 1e6:.1f} M parameters)")
    print(f"the LM head: {head / 1e6:.1f} M values")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = [CASES / "norway-capital.yaml", CASES / "germany-capital.yaml"]
    parser.add_argument("--cases", type=Path, nargs="+", default=default)
    args = parser.parse_args(argv)

    from pytest_factedit.model.head_argmax import fp16_screen_rows
    from pytest_factedit.model.load import load
    from pytest_factedit.model.precision import cpu_bf16_units
    from pytest_factedit.run.probing import BaseAnswerCache

    machine = measure_machine()
    lm = load(None, "cpu")
    units = cpu_bf16_units()
    print_machine(lm.model, machine, units)
    cache = BaseAnswerCache()
    for path in args.cases:
        passes, seconds = probe_case(lm, path.resolve(), cache)
        screened = units is not None or bool(fp16_screen_rows())
        print_case(path.stem, passes, seconds, floors(lm.model, passes, machine, screened))


if __name__ == "__main__":
    main()
