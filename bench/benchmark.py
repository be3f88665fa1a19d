"""Performance figures for docs/performance.md, against the targets, and revisions compared in one run.

    python bench/benchmark.py                      # load, every phase of every shipped case, the suite,
                                                   # README command 1, the edit on the benchmark facts
    python bench/benchmark.py --skip-benchmark-facts --skip-readme   # the quicker figures only
    python bench/benchmark.py --skip-conversion --skip-suite --skip-load --skip-readme --facts-logs DIR
    python bench/benchmark.py --skip-suite --skip-conversion
    python bench/benchmark.py --against HEAD~3     # this checkout and HEAD~3 (a git worktree), interleaved
    python bench/benchmark.py --against HEAD --skip-cases --repeats 3   # first conversions only, A B B A ...
    python bench/benchmark.py --against HEAD~1 --fresh-probes --skip-conversion   # base probes that decode
    python bench/benchmark.py --set train_precision=bfloat16 --skip-suite   # the cases with other settings
    python bench/benchmark.py --against-set train_precision=bfloat16 --skip-conversion --skip-suite --skip-load

Per case (medians over the shipped cases): probing the base model, localization, both edit stages,
probing the edited model. Also: the cached load (a fresh process: imports, then `load()`), the first
conversion into a throw-away cache, and the wall seconds of `pytest fact_cases/`: with nothing of the base
model cached (`--factedit-fresh-probes`), and warm (the second of two runs, which reads the base model's
answers, the editor's decodes of it and each fact's trace back from the cache), with that run's medians.
Last, README command 1 (fresh venv, installs, `pytest fact_cases/`) in a fresh clone of HEAD with an empty
model cache (`--skip-readme` leaves it out; it needs the package index, or pip's cache). Then the edit
target's own measure: the default editor on the benchmark facts (the 100 CounterFact facts the embedded
model knows, then the 69 of bench/same_subject), one fact at a time, through `bench/editors.py`; it prints
the median edit against the 5 s target and, beside it, each quality target of docs/benchmarks.md on the
same facts (`--skip-benchmark-facts` leaves it out; `--facts-logs DIR` keeps the logs, and goes on with
the ones DIR holds).

With --against REV (or --against-set), only the shipped cases and first conversions are compared. With
--against REV, one worker process per checkout loads the model once and runs the same cases, in the order A B
B A A B ..., so that both see the same machine state; the table gives each phase's median for both and their
ratio. Absolute seconds differ across machines; ratios measured in one run do not. The answers of both are
compared too (a hash of every base and edited answer per case). The first conversion is timed for both as
well, --repeats times each in the same interleaved order, each in a fresh process into an empty cache, and the
weights hashes the two conversions record are compared. A worker keeps the base model's decodes of a case for
its next run of it, as a warm suite does; with --fresh-probes, every case run starts from an empty cache
instead, so that base_probe_seconds is what the base probe costs when it decodes every row.

--set KEY=VALUE puts method settings over every case's own (this checkout's runs; the suite runs the cases'
own settings, so it is not measured then). --against-set KEY=VALUE compares this checkout with those
settings (B) against it without them (A), interleaved the same way; with --against, B is REV with them.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from case_worker import LATENCY_KEYS
from editors import EDIT_TARGET_SECONDS, QUALITY_TARGETS, edit_time_against_target, quality_against_targets, read_logs
from facts import setting_overrides

from pytest_factedit.edit.settings import DEFAULT_METHOD

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WORKER = BENCH / "case_worker.py"
README = REPO / "README.md"
# The targets (2-core CPU, fp32, warm cache): figure -> seconds. `edit_seconds` is localization and the
# whole edit (objectives, both stages); the stages alone and localization alone are shown beside it.
TARGETS = {
    "probe_seconds": 1.5,
    "edit_seconds": 5.0,
    "suite wall": 90.0,
    "cached load": 3.0,
    "first conversion": 30.0,  # into an empty cache, the embedded model's chunk packages installed
    "README command 1": 240.0,  # a fresh clone and venv, installs included, an empty model cache
}
# The benchmarks the edit-time target is measured on (docs/benchmarks.md): a log name and editors.py's arguments.
BENCHMARK_FACTS = (
    ("counterfact", "100 CounterFact facts", ()),
    ("same-subject", "69 same-subject facts", ("--cases", "same_subject")),
)
PHASES = ("base_probe_seconds", "localize_seconds", "stages_seconds", "edit_seconds", "probe_seconds", "wall_seconds")


class Worker:
    """bench/case_worker.py running one checkout's code."""

    def __init__(
        self, checkout: Path, cases: Path, overrides: dict[str, Any] | None = None, fresh_probes: bool = False
    ) -> None:
        env = {**os.environ, "PYTHONPATH": str(checkout)}
        fresh = ["--fresh-probes"] if fresh_probes else []
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER), str(cases), json.dumps(overrides or {}), *fresh],
            env=env,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.ready = self._read()
        if not Path(self.ready["package"]).resolve().is_relative_to(checkout.resolve()):
            raise RuntimeError(f"the worker for {checkout} imported pytest_factedit from {self.ready['package']}")

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the case worker stopped; run it by hand to see why: python bench/case_worker.py")
        return json.loads(line)

    def run(self, case: Path) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{case}\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.process.stdin:
            self.process.stdin.close()
        self.process.wait(timeout=60)


def case_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.y*ml") if not p.name.startswith("_"))


def medians(results: list[dict[str, Any]]) -> dict[str, float]:
    ran = [r for r in results if r["status"] == "ran"]
    return {phase: statistics.median(r[phase] for r in ran) for phase in PHASES if ran}


def cached_load() -> dict[str, float]:
    """A fresh process: seconds to import torch and transformers, then to load the cached embedded model."""
    code = (
        "import time; t = time.perf_counter(); import torch, transformers; i = time.perf_counter(); "
        "from pytest_factedit.model.load import load; load(None, 'cpu'); "
        "print(i - t, time.perf_counter() - i)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)  # the cache exists after this
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    imports, load = (float(x) for x in out.split())
    return {"imports": imports, "load": load, "cached load": imports + load}


def first_conversion_seconds(checkout: Path = REPO) -> tuple[float, str]:
    """Convert the embedded GGUF into an empty cache in a fresh process running `checkout`'s code; returns that
    process's figure and the weights hash it recorded."""
    with tempfile.TemporaryDirectory() as cache:
        code = (
            "import pytest_factedit; from pytest_factedit.model.load import load; lm = load(None, 'cpu'); "
            "print(lm.conversion_seconds, lm.weights_hash, pytest_factedit.__file__)"
        )
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=checkout,  # `python -c` puts the working folder first on sys.path
            env={**os.environ, "FACTEDIT_CACHE": cache, "PYTHONPATH": str(checkout)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        seconds, weights_hash, package = out.strip().splitlines()[-1].split(maxsplit=2)
        if not Path(package).resolve().is_relative_to(checkout.resolve()):
            raise RuntimeError(f"the conversion for {checkout} imported pytest_factedit from {package}")
        return float(seconds), weights_hash


def suite_wall_seconds(*options: str, run_id: str | None = None) -> tuple[float, str]:
    """Wall seconds of `pytest fact_cases/ OPTIONS` in a fresh process, and pytest's closing line."""
    started = time.perf_counter()
    run_id = run_id or f"benchmark-suite-{time.strftime('%Y%m%d-%H%M%S')}"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "fact_cases/", "-q", "-p", "no:cacheprovider", "--factedit-run-id", run_id]
        + list(options),
        cwd=REPO,
        check=False,
        capture_output=True,
        text=True,
    )
    closing = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else f"exit {done.returncode}"
    return time.perf_counter() - started, closing


def suite_figures() -> dict[str, float]:
    """The suite with nothing of the base model kept (`--factedit-fresh-probes`), then warm: a run that fills
    the cache with its answers and traces where they are missing, and the run after it, timed."""
    figures = {}
    figures["suite wall, nothing cached"], closing = suite_wall_seconds("--factedit-fresh-probes")
    print(f"pytest fact_cases/ --factedit-fresh-probes: {closing}")
    filled, closing = suite_wall_seconds()
    print(f"pytest fact_cases/ (fills the cache): {closing}, {filled:.1f} s")
    run_id = f"benchmark-suite-warm-{time.strftime('%Y%m%d-%H%M%S')}"
    figures["suite wall"], closing = suite_wall_seconds(run_id=run_id)
    print(f"pytest fact_cases/ (warm): {closing}")
    records = [json.loads(line) for line in (REPO / "reports" / run_id / "results.jsonl").open(encoding="utf-8")]
    for phase in ("localize_seconds", "edit_seconds", "probe_seconds"):
        values = [r["timings"][phase] for r in records if r.get("timings", {}).get(phase) is not None]
        print(f"  warm suite, median {phase}: {statistics.median(values):.2f} s over {len(values)} cases")
    return figures


def cpu_line() -> str:
    """The CPU, its kernels' instruction set, the bf16 units the plugin uses, the form of a greedy step's few-row
    products and of its head (bench/step_products.py) and the threads torch uses (every figure depends on them)."""
    import torch

    from pytest_factedit.infra.cpu import cpuinfo_field
    from pytest_factedit.model.head_argmax import greedy_head_form
    from pytest_factedit.model.lmhead import few_row_products, head_product_form
    from pytest_factedit.model.precision import cpu_bf16_units
    from pytest_factedit.run.model_holder import machine_info

    info = machine_info()
    units = cpu_bf16_units() or "none"
    # a model name such as "AMD EPYC" can cover CPU generations whose figures differ by 2x
    family, model = cpuinfo_field("cpu family"), cpuinfo_field("model")
    generation = f", family {family} model {model}" if family and model else ""
    return (
        f"CPU: {info['cpu']}{generation} ({info['cpu_capability']} kernels, bf16 units: {units}; a greedy step's"
        f" products: {few_row_products()}, its head: {greedy_head_form()}; the LM head's many rows:"
        f" {head_product_form()}), {torch.get_num_threads()} torch threads"
    )


def readme_command() -> str:
    """The README's first command, as a user copies it: the first bash block after "## The two commands"."""
    section = README.read_text(encoding="utf-8").split("## The two commands", 1)[1]
    return section.split("```bash\n", 1)[1].split("\n```", 1)[0].strip()


def readme_seconds() -> dict[str, float]:
    """README command 1 in a fresh clone of this checkout's HEAD (commit first), with an empty model cache,
    timed from the clone on: what a new user waits for, but for downloads pip's cache on this machine saves."""
    command = readme_command()
    with tempfile.TemporaryDirectory() as folder:
        clone, cache = Path(folder) / "clone", Path(folder) / "cache"
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        started = time.perf_counter()
        subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
        done = subprocess.run(
            ["bash", "-c", command],
            cwd=clone,
            env={**env, "FACTEDIT_CACHE": str(cache)},
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - started
    last = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    print(f"README command 1, fresh clone, empty model cache: rc {done.returncode}, {seconds:.1f} s; {last}")
    if done.returncode != 0:
        print(done.stdout[-2000:], done.stderr[-2000:], sep="\n")
        return {}
    return {"README command 1": seconds}


def benchmark_fact_runs(log_dir: Path, overrides: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The default editor on each benchmark's facts, one fact at a time on every core (`bench/editors.py`, one
    process per benchmark), logged to LOG_DIR/<benchmark>.jsonl; a log already there is gone on with
    (`--resume`), so an interrupted run loses nothing. Returns the facts that ran, per benchmark."""
    log_dir = log_dir.resolve()  # editors.py runs in bench/
    log_dir.mkdir(parents=True, exist_ok=True)
    runs = {}
    for name, label, extra in BENCHMARK_FACTS:
        log = log_dir / f"{name}.jsonl"
        print(f"the default editor on the {label}: bench/editors.py, logged to {log}", flush=True)
        command = [sys.executable, "editors.py", "--methods", DEFAULT_METHOD, *extra, "--log", str(log), "--resume"]
        subprocess.run(command + (["--set", *overrides] if overrides else []), cwd=BENCH, check=True)
        runs[label] = [r for r in read_logs([log]) if r["status"] == "ran"]
    return runs


def print_benchmark_facts(runs: dict[str, list[dict[str, Any]]]) -> None:
    """The edit-time target's own measure (the median edit over each benchmark's facts), then the quality
    targets on the same facts beside it."""
    print("| the edit on the benchmark facts | facts | median edit (quartiles) | edits within target | target | met |")
    print("|---|---|---|---|---|---|")
    for label, ran in runs.items():
        if not ran:
            print(f"| {label} | 0 | n/a | | <= {EDIT_TARGET_SECONDS:g} s | n/a |")
            continue
        edit = edit_time_against_target(ran)
        low, high = edit["quartiles"]
        met = "yes" if edit["met"] else f"no ({edit['median'] / EDIT_TARGET_SECONDS:.2f}x)"
        print(
            f"| {label} | {edit['facts']} | {edit['median']:.2f} s ({low:.2f}-{high:.2f}) | {edit['within']} of "
            f"{edit['facts']} | <= {EDIT_TARGET_SECONDS:g} s | {met} |"
        )
    print("\n| quality on the same facts | " + " | ".join(runs) + " | target |")
    print("|---|" + "---|" * len(runs) + "---|")
    columns = [quality_against_targets(ran) for ran in runs.values()]
    for (metric, lowest), *cells in zip(QUALITY_TARGETS, *columns):
        shown = [figure + ("" if met is None else (" yes" if met else " **no**")) for figure, met in cells]
        print(f"| {metric} | " + " | ".join(shown) + f" | >= {lowest:g} |")


def print_targets(figures: dict[str, float]) -> None:
    print("| figure | measured (s) | target (s) | met |")
    print("|---|---|---|---|")
    for name, value in figures.items():
        target = TARGETS.get(name)
        met = "" if target is None else ("yes" if value <= target else f"no ({value / target:.1f}x)")
        print(f"| {name} | {value:.2f} | {'' if target is None else f'<= {target:g}'} | {met} |")


def measure_here(args: argparse.Namespace) -> int:
    worker = Worker(REPO, args.cases, args.set)
    results = [worker.run(case) for _ in range(args.repeats) for case in case_files(args.cases)]
    worker.close()
    for r in results:
        print(
            f"  {r['case']}: "
            + " ".join(f"{p}={r[p]:.2f}" for p in PHASES if r.get(p) is not None)
            + f" steps={r['steps']}",
            flush=True,
        )
    figures: dict[str, float] = dict(medians(results))
    if not args.skip_load:
        figures.update(cached_load())
    if not args.skip_conversion:
        figures["first conversion"] = first_conversion_seconds()[0]
    if not args.skip_suite and not args.set:
        figures.update(suite_figures())
    if not args.skip_readme:
        figures.update(readme_seconds())
    runs: dict[str, list[dict[str, Any]]] = {}
    logs = args.facts_logs
    if not args.skip_benchmark_facts:
        logs = logs or Path(tempfile.mkdtemp(prefix="factedit-benchmark-facts-"))
        runs = benchmark_fact_runs(logs, args.set_pairs)
    settings = f"; settings over the cases' own: {args.set} (the suite not measured)" if args.set else ""
    print(f"\ncases: {len(case_files(args.cases))} x {args.repeats}; cores: {os.cpu_count()}; {cpu_line()}{settings}\n")
    print_targets(figures)
    if runs:
        print(f"\nthe benchmark facts (logs in {logs}):\n")
        print_benchmark_facts(runs)
    return 0


def measure_against(args: argparse.Namespace) -> int:
    """This checkout (A) and REV or this checkout with --against-set (B): the cases interleaved A B B A per
    case, one worker each; then, against a REV, the first conversions, interleaved the same way."""
    with tempfile.TemporaryDirectory() as folder:
        other = Path(folder) / "rev"
        if args.against:
            subprocess.run(
                ["git", "worktree", "add", "--detach", str(other), args.against],
                cwd=REPO,
                check=True,
                capture_output=True,
            )
        try:
            if not args.skip_cases:
                b_overrides = {**args.set, **args.against_set}
                b_side = Worker(other if args.against else REPO, args.cases, b_overrides, args.fresh_probes)
                workers = {"A": Worker(REPO, args.cases, args.set, args.fresh_probes), "B": b_side}
                results: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
                order = ["A", "B"]
                for case in [c for _ in range(args.repeats) for c in case_files(args.cases)]:
                    for side in order:
                        results[side].append(workers[side].run(case))
                    order.reverse()
                for worker in workers.values():
                    worker.close()
                print_comparison(b_name(args), results, {side: w.ready for side, w in workers.items()})
            if args.against and not args.skip_conversion:
                print_conversions(args.against, interleaved_conversions(other, args.repeats))
        finally:
            if args.against:
                subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=REPO, check=False)
    return 0


def b_name(args: argparse.Namespace) -> str:
    """What B is: REV, this checkout, and the settings B runs over the cases' own."""
    settings = " ".join(shlex.quote(f"{k}={v}") for k, v in {**args.set, **args.against_set}.items())
    return (args.against or "this checkout") + (f" with {settings}" if settings else "")


def interleaved_conversions(other: Path, repeats: int) -> dict[str, list[tuple[float, str]]]:
    """First conversions by this checkout (A) and `other` (B), `repeats` each, in the order A B B A A B ..."""
    checkouts = {"A": REPO, "B": other}
    runs: dict[str, list[tuple[float, str]]] = {"A": [], "B": []}
    order = ["A", "B"]
    for _ in range(repeats):
        for side in order:
            runs[side].append(first_conversion_seconds(checkouts[side]))
            print(f"  first conversion {side}: {runs[side][-1][0]:.2f} s", flush=True)
        order.reverse()
    return runs


def print_conversions(rev: str, runs: dict[str, list[tuple[float, str]]]) -> None:
    a, b = ([seconds for seconds, _ in runs[side]] for side in ("A", "B"))
    same = sum(x[1] == y[1] for x, y in zip(runs["A"], runs["B"]))
    print(f"\nA = this checkout, B = {rev}; {len(a)} first conversions each, interleaved; cores: {os.cpu_count()}\n")
    print("| first conversion | A (s) | B (s) | A / B |")
    print("|---|---|---|---|")
    for number, (x, y) in enumerate(zip(a, b), 1):
        print(f"| run {number} | {x:.2f} | {y:.2f} | {x / y:.2f} |")
    median_a, median_b = statistics.median(a), statistics.median(b)
    print(f"| median | {median_a:.2f} | {median_b:.2f} | {median_a / median_b:.2f} |")
    print(f"\nweights hash identical in {same} of {len(a)} pairs")


def print_latency(results: dict[str, list[dict[str, Any]]]) -> None:
    """The latency figure's timings (ms per token) and its ratio, medians over the case runs of each side."""
    timed = {side: [r for r in runs if r.get("edited_seconds_per_token")] for side, runs in results.items()}
    if not all(timed.values()):
        return
    print("\n| latency (median over cases) | A | B |")
    print("|---|---|---|")
    for key in LATENCY_KEYS:
        a, b = (statistics.median(r[key] for r in timed[side]) * 1000 for side in ("A", "B"))
        print(f"| {key} (ms) | {a:.1f} | {b:.1f} |")
    a, b = (
        statistics.median(r["edited_seconds_per_token"] / r["base_seconds_per_token"] for r in timed[side])
        for side in ("A", "B")
    )
    print(f"| latency_overhead | {a:.3f} | {b:.3f} |")


def print_comparison(rev: str, results: dict[str, list[dict[str, Any]]], ready: dict[str, dict[str, Any]]) -> None:
    a, b = medians(results["A"]), medians(results["B"])
    pairs = list(zip(results["A"], results["B"]))
    same = sum(x["answers_sha256"] == y["answers_sha256"] for x, y in pairs)
    same_verdicts = sum(x["judged_sha256"] == y["judged_sha256"] for x, y in pairs)
    print(f"\nA = this checkout, B = {rev}; {len(results['A'])} case runs each, interleaved; {cpu_line()}\n")
    print("| phase (median over cases) | A (s) | B (s) | A / B |")
    print("|---|---|---|---|")
    for phase in PHASES:
        print(f"| {phase} | {a[phase]:.2f} | {b[phase]:.2f} | {a[phase] / b[phase]:.2f} |")
    for key in ("load_seconds",):
        print(
            f"| worker {key} | {ready['A'][key]:.2f} | {ready['B'][key]:.2f} | "
            f"{ready['A'][key] / ready['B'][key]:.2f} |"
        )
    print_latency(results)
    print(
        f"\nverdicts (first-named answer, expected said, metrics but latency) same in {same_verdicts} of {len(pairs)}"
    )
    print(f"answer texts identical in {same} of {len(pairs)} case runs")
    for x, y in pairs:
        for row_a, row_b in zip(x["judged"], y["judged"]):
            if row_a != row_b:
                print(f"  {x['case']}: A {row_a} | B {row_b}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=Path, default=REPO / "fact_cases")
    parser.add_argument("--repeats", type=int, default=1, help="passes over the cases")
    parser.add_argument("--against", metavar="REV", help="also run REV (a git worktree) and print ratios")
    parser.add_argument("--skip-conversion", action="store_true")
    parser.add_argument("--skip-cases", action="store_true", help="with --against: only the first conversions")
    parser.add_argument(
        "--fresh-probes",
        action="store_true",
        help="with --against: each case run starts from an empty cache of the base model's decodes (its base probe "
        "decodes every row), not from the worker's earlier run of it",
    )
    parser.add_argument("--skip-suite", action="store_true")
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--skip-readme", action="store_true", help="not README command 1 in a fresh clone")
    parser.add_argument(
        "--skip-benchmark-facts",
        action="store_true",
        help="not the edit target's own measure: the default editor on the 100 CounterFact and 69 same-subject "
        "facts (bench/editors.py; about 30 minutes on a 2-core Xeon with AMX, 40 held to AVX2 kernels)",
    )
    parser.add_argument(
        "--facts-logs",
        type=Path,
        metavar="DIR",
        help="where the benchmark facts' logs go (DIR/counterfact.jsonl, DIR/same-subject.jsonl; logs already "
        "there are gone on with); default: a new folder under the system's temporary folder",
    )
    parser.add_argument(
        "--set", nargs="+", default=[], metavar="KEY=VALUE", help="method settings over each case's own"
    )
    parser.add_argument(
        "--against-set", nargs="+", default=[], metavar="KEY=VALUE", help="method settings of B (REV, or this checkout)"
    )
    args = parser.parse_args()
    args.set_pairs = list(args.set)
    args.set, args.against_set = setting_overrides(args.set), setting_overrides(args.against_set)
    return measure_against(args) if args.against or args.against_set else measure_here(args)


if __name__ == "__main__":
    raise SystemExit(main())
