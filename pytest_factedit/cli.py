"""The `factedit` command: validate cases, prepare a model, localize or edit a fact, import, show a report.

Every error the user can meet is a FactEditError; `main` prints it one way (`error: ...`, exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .cases.ids import inside
from .cases.loader import DEFAULTS_FILE, claim_id, is_case_file, load_case, load_defaults
from .edit import resolve_settings
from .edit.reference import settings_reference
from .errors import FactEditError, out_of_memory_hint, shown, terminal_text
from .model.targets import TRACING_MODES
from .report.files import RESULTS_FILE, SUMMARY_FILE, read_results, read_summary
from .report.heatmap import render_heatmap
from .report.tables import summary_table
from .run.options import EDIT_OPTIONS, MODEL_OPTIONS, OPTIONS, Options, add_options, options_markdown
from .run.planned import PlannedCase
from .session import FactEditSession

if TYPE_CHECKING:
    from .cases.schema import FactCase
    from .edit.settings import EditSettings
    from .model.load import LoadedModel


def _case_files(paths: Sequence[str]) -> list[tuple[Path, Path]]:
    """(case file, the case folder it must lie in): a folder named on the command line holds the files
    found under it; a file named alone, its own folder."""
    found: list[tuple[Path, Path]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend((p, path) for p in sorted(path.rglob("*")) if is_case_file(p))
        else:
            found.append((path, path.parent))
    return found


def _root(args: argparse.Namespace) -> Path:
    return Path(args.root) if args.root else Path.cwd()


def _options(args: argparse.Namespace) -> Options:
    """The shared options as this command was given them (those it does not take are None)."""
    return Options.from_values(lambda name: getattr(args, OPTIONS[name].dest(""), None), Path("reports"))


def _load_model(args: argparse.Namespace) -> LoadedModel:
    from .model.load import load

    return load(args.model, **_options(args).load_settings())


def _case_and_settings(args: argparse.Namespace) -> tuple[FactCase, EditSettings]:
    """The case file `args.case` and its validated settings, with this command's overrides."""
    case = load_case(Path(args.case), root=_root(args))
    overrides = {"name": getattr(args, "method", None), "seed": args.seed, "localize": getattr(args, "localize", None)}
    try:
        return case, resolve_settings(case.method, overrides)
    except FactEditError as exc:
        raise exc.at(args.case) from exc


def cmd_validate(args: argparse.Namespace) -> int:
    bad = 0
    files = _case_files(args.paths)
    claimed: dict[str, Path] = {}
    for path, folder in files:
        try:
            case = load_case(path, root=_root(args), folder=folder)
            claim_id(claimed, case, path)
            resolve_settings(case.method)
            print(
                f"ok     {terminal_text(str(path))}  ({case.id}: {len(case.prompts)} prompts, {len(case.paraphrases)} "
                f"paraphrases, {len(case.neighbours)} neighbours, {len(case.controls)} controls)"
            )
        except FactEditError as exc:
            bad += 1
            print(f"error  {exc if exc.path else exc.at(path)}")
        except Exception as exc:  # one file must not stop the others: say what broke, go on
            bad += 1
            print(f"error  {terminal_text(str(path))}: unexpected {type(exc).__name__}: {shown(str(exc), 200)}")
    print(f"{len(files) - bad} valid, {bad} invalid")
    return 1 if bad or not files else 0


def cmd_prepare(args: argparse.Namespace) -> int:
    lm = _load_model(args)
    conversion = f"{lm.conversion_seconds:.1f}s" if lm.conversion_seconds is not None else "cached"
    print(
        f"model {lm.spec.name} ({type(lm.model).__name__}) on {lm.device}/{lm.dtype}: "
        f"conversion {conversion}, load {lm.load_seconds:.1f}s, weights {lm.weights_hash[:16]}"
    )
    for note in lm.notes:  # where it loaded from, and any product library the load chose
        print(f"  {note}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    path = Path(args.results)
    results = path / RESULTS_FILE if path.is_dir() else path
    if not results.is_file():
        raise FactEditError(f"no results file at {results}")
    print(summary_table(read_results(results), color=sys.stdout.isatty()), end="")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Write a run's self-contained HTML page from its results.jsonl (and summary.json when there is one)."""
    from .report.html import write_html

    path = Path(args.run_dir)
    results = path / RESULTS_FILE if path.is_dir() else path
    if not results.is_file():
        raise FactEditError(
            f"no results file at {results}. Fix: name a run folder (reports/<run-id>, or its results.jsonl) "
            "that a pytest run with the plugin wrote"
        )
    summary_file = results.parent / SUMMARY_FILE
    summary = read_summary(summary_file) if summary_file.is_file() else None
    out = Path(args.html) if args.html else results.parent / "report.html"
    records = read_results(results)
    try:
        print(f"html: {write_html(out, records, summary)}")
    except OSError as exc:
        raise FactEditError(
            f"cannot write {out}: {exc.strerror or exc}. Fix: --html PATH in a folder you can write"
        ) from exc
    return 0


def cmd_localize(args: argparse.Namespace) -> int:
    from .run.case import localize_case

    case, settings = _case_and_settings(args)
    lm = _load_model(args)
    method = args.trace_method or (settings.localize if settings.localize in TRACING_MODES else TRACING_MODES[0])
    record = localize_case(lm, case, settings, method).as_record()
    print(render_heatmap(record, case.id, color=sys.stdout.isatty()), end="")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1), encoding="utf-8")
        print(f"record: {args.json}")
    if args.png != "":
        png = Path(args.png) if args.png else inside(Path.cwd(), f"{case.id}-localization.png")
        try:
            from .report.heatmap import write_png

            print(f"heatmap: {write_png(record, png, case.id)}")
        except ImportError:
            print("no PNG: matplotlib is not installed (pip install 'pytest-factedit[plot]')")
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    case, settings = _case_and_settings(args)  # resolved once: what was validated is what runs
    session = FactEditSession(_options(args), None)  # no report folder: the record is printed instead
    session.load_model()
    record = session.record(args.case, PlannedCase(case, settings))
    print(summary_table([record], color=sys.stdout.isatty()), end="")
    if record["status"] != "ran":
        print(terminal_text(f"{record['status']}: {record['reason']}"))
        return 1
    adapters = record.get("adapters") or {}
    if args.save_adapters:
        print(
            f"adapters: {adapters['dir']} ({', '.join(adapters['names'])})"
            if adapters.get("names")
            else f"not saved: {adapters.get('error')}"
        )
    return 0 if all(m["passed"] for m in record["metrics"].values()) else 1


def cmd_options(args: argparse.Namespace) -> int:
    """Print every option of a run as Markdown: docs/options.md is this output."""
    print(options_markdown(), end="")
    return 0


def cmd_settings(args: argparse.Namespace) -> int:
    """Print every `method:` key as Markdown: docs/settings.md is this output."""
    print(settings_reference(), end="")
    return 0


def _check_import_options(args: argparse.Namespace) -> None:
    """Refuse what `factedit import` could not finish, before anything is read, loaded or written: counts
    below their minimum (a negative -n would slice the records), an --out that is a file, a --defaults
    file that is missing or no valid _defaults.yaml."""
    counts = (("-n", args.n, 1, 100), ("--neighbours", args.neighbours, 0, 5), ("--anchors", args.anchors, 0, 5))
    for flag, value, least, example in counts:
        if value < least:
            raise FactEditError(f"{flag}: expected a whole number >= {least}, found {value}. Fix: {flag} {example}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise FactEditError(
            f"--out {out}: expected a folder to write the cases in, found a file. "
            "Fix: name a new folder, or one that holds cases"
        )
    if args.defaults:
        defaults = Path(args.defaults)
        if not defaults.is_file():
            raise FactEditError(
                f"--defaults {defaults}: expected a {DEFAULTS_FILE} file to copy into --out, found "
                f"{'a folder' if defaults.is_dir() else 'nothing'}. Fix: name an existing file, or leave --defaults out"
            )
        load_defaults(defaults)  # one that every case would fail on fails here, once


def cmd_import(args: argparse.Namespace) -> int:
    from .cases.counterfact import known_records, neighbour_records, read_records, sampled_records, write_cases

    _check_import_options(args)
    records = read_records(Path(args.file))
    lm = _load_model(args) if args.known_only or args.neighbours or args.anchors else None
    if lm is not None and args.known_only:
        chosen = list(known_records(lm.model, lm.tokenizer, records, args.n, args.seed))
    else:
        chosen = sampled_records(records, args.n, args.seed)
    neighbours = (
        neighbour_records(lm.model, lm.tokenizer, chosen, records, args.neighbours, args.seed)
        if lm and args.neighbours
        else None
    )
    anchors = (
        neighbour_records(lm.model, lm.tokenizer, chosen, records, args.anchors, args.seed + 1, taken=neighbours)
        if lm and args.anchors
        else None
    )
    out = Path(args.out)
    written, skipped = write_cases(chosen, out, Path(args.defaults) if args.defaults else None, neighbours, anchors)
    for record_id, reason in skipped:
        print(terminal_text(f"skipped record {record_id}: {reason}", newlines=False))
    known = f" the model answers correctly ({args.model})" if args.known_only else ""
    print(
        f"wrote {len(written)} cases{known} to {out}"
        + (
            ""
            if (out / DEFAULTS_FILE).exists()
            else f"; shared controls: put a {DEFAULTS_FILE} there (--defaults fact_cases/{DEFAULTS_FILE})"
        )
    )
    return 0 if written else 1


def _subcommand(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help: str,
    options: Sequence[str] = (),
    root: bool = False,
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help)
    add_options(parser.add_argument, options)
    if root:
        parser.add_argument("--root", help="top folder whose _defaults.yaml files apply (default: cwd)")
    return parser


def _import_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    imp = _subcommand(sub, "import", "write schema-v1 cases from a public benchmark file", MODEL_OPTIONS)
    imp.add_argument("source", choices=("counterfact",))
    imp.add_argument("file", help="CounterFact JSON (a list of records)")
    imp.add_argument("--out", required=True, metavar="DIR")
    imp.add_argument("-n", type=int, default=100, help="how many cases (default 100)")
    imp.add_argument("--seed", type=int, default=0, help="seed of the record order")
    imp.add_argument("--known-only", action="store_true", help="keep only facts the model answers correctly")
    imp.add_argument(
        "--neighbours",
        type=int,
        default=0,
        metavar="K",
        help="add up to K neighbours per case: other records with the same prompt template whose answer "
        "the model gives, those sharing the old answer first (besides the record's locality prompt)",
    )
    imp.add_argument(
        "--anchors",
        type=int,
        default=0,
        metavar="K",
        help="add up to K anchors per case: more records of its relation the model answers correctly (not its "
        "neighbours), which the edit is trained to leave as they are",
    )
    imp.add_argument("--defaults", metavar="FILE", help="copy this _defaults.yaml (shared controls) into DIR")
    imp.set_defaults(func=cmd_import)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="factedit", description="pytest-factedit helper commands")
    sub = parser.add_subparsers(dest="command", required=True)
    validate = _subcommand(sub, "validate", "check fact case YAML files against schema v1", root=True)
    validate.add_argument("paths", nargs="+", help="case files or folders")
    validate.set_defaults(func=cmd_validate)
    prepare = _subcommand(
        sub, "prepare", "load a model once (converting the embedded GGUF into the cache)", MODEL_OPTIONS
    )
    prepare.set_defaults(func=cmd_prepare)
    loc = _subcommand(
        sub,
        "localize",
        "trace where a case's old answer is stored and print the heatmap",
        MODEL_OPTIONS + ("seed",),
        root=True,
    )
    loc.add_argument("case", help="a fact case YAML file")
    loc.add_argument(
        "--method",
        dest="trace_method",
        choices=TRACING_MODES,
        default=None,
        help="default: method.localize of the case when it traces, else trace",
    )
    loc.add_argument(
        "--png",
        default=None,
        metavar="PATH",
        help="PNG path (default: <case-id>-localization.png when matplotlib is installed; '' for none)",
    )
    loc.add_argument("--json", default=None, metavar="PATH", help="also write the localization record as JSON")
    loc.set_defaults(func=cmd_localize)
    edit = _subcommand(
        sub,
        "edit",
        "edit one case, print its metrics, optionally save the adapters",
        MODEL_OPTIONS + EDIT_OPTIONS,
        root=True,
    )
    edit.add_argument("case", help="a fact case YAML file")
    edit.set_defaults(func=cmd_edit)
    _import_parser(sub)
    show = sub.add_parser("show", help="print the table of a run (reports/latest by default)")
    show.add_argument("results", nargs="?", default="reports/latest")
    show.set_defaults(func=cmd_show)
    report = sub.add_parser("report", help="write a run's report as one self-contained HTML page")
    report.add_argument("run_dir", nargs="?", default="reports/latest", help="run folder (default: reports/latest)")
    report.add_argument("--html", metavar="OUT.html", help="where to write the page (default: RUN_DIR/report.html)")
    report.set_defaults(func=cmd_report)
    options = sub.add_parser("options", help="print every pytest option of a run as Markdown (docs/options.md)")
    options.set_defaults(func=cmd_options)
    settings = sub.add_parser("settings", help="print every method: key of every editor as Markdown (docs/settings.md)")
    settings.set_defaults(func=cmd_settings)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 must not crash a print
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except FactEditError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # torch's out-of-memory error: the advice, not a traceback
        if not out_of_memory_hint(exc):
            raise
        print(f"error: {out_of_memory_hint(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
