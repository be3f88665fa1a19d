"""The `factedit` command: validate cases, prepare a model, localize or edit a fact, show a report."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from .cases import DEFAULTS_FILE, CaseError, is_case_file, load_case
from .models import DEFAULT_MODEL


def _case_files(paths: Sequence[str]) -> list[Path]:
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        found.extend(sorted(p for p in path.rglob("*") if is_case_file(p)) if path.is_dir() else [path])
    return found


def cmd_validate(args: argparse.Namespace) -> int:
    from .edit import MethodError, resolve_settings

    bad = 0
    files = _case_files(args.paths)
    for path in files:
        try:
            case = load_case(path, root=Path(args.root) if args.root else Path.cwd())
            resolve_settings(case.method)
            print(f"ok     {path}  ({case.id}: {len(case.prompts)} prompts, {len(case.paraphrases)} paraphrases, "
                  f"{len(case.controls)} controls)")
        except (CaseError, MethodError) as exc:
            bad += 1
            print(f"error  {exc if isinstance(exc, CaseError) else f'{path}: {exc}'}")
    print(f"{len(files) - bad} valid, {bad} invalid")
    return 1 if bad or not files else 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from .models import ModelLoadError, load

    try:
        lm = load(args.model, args.device)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    conversion = f"{lm.conversion_seconds:.1f}s" if lm.conversion_seconds is not None else "cached"
    print(f"model {lm.spec.name} ({type(lm.model).__name__}) on {lm.device}/{lm.dtype}: "
          f"conversion {conversion}, load {lm.load_seconds:.1f}s, weights {lm.weights_hash[:16]}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from .report import summary_table

    path = Path(args.results)
    if path.is_dir():
        path = path / "results.jsonl"
    if not path.is_file():
        print(f"error: no results file at {path}", file=sys.stderr)
        return 2
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    print(summary_table(records, color=sys.stdout.isatty()), end="")
    return 0


def _case_and_settings(args: argparse.Namespace, overrides: dict) -> tuple[Any, Any] | None:
    """The case file `args.case` and its validated settings; None after printing the error."""
    from .edit import MethodError, resolve_settings

    try:
        case = load_case(Path(args.case), root=Path(args.root) if args.root else Path.cwd())
        return case, resolve_settings(case.method, overrides)
    except (CaseError, MethodError) as exc:
        print(f"error: {exc if isinstance(exc, CaseError) else f'{args.case}: {exc}'}", file=sys.stderr)
        return None


def cmd_localize(args: argparse.Namespace) -> int:
    from .heatmap import render_heatmap
    from .models import ModelLoadError, load
    from .runner import localize_case

    loaded = _case_and_settings(args, {"seed": args.seed})
    if loaded is None:
        return 2
    case, settings = loaded
    try:
        lm = load(args.model, args.device)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    method = args.method or (settings.localize if settings.localize in ("trace", "attribution") else "trace")
    record = localize_case(lm, case, settings, method).as_record()
    print(render_heatmap(record, case.id, color=sys.stdout.isatty()), end="")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1), encoding="utf-8")
        print(f"record: {args.json}")
    if args.png != "":
        png = Path(args.png or f"{case.id}-localization.png")
        try:
            from .heatmap import write_png

            print(f"heatmap: {write_png(record, png, case.id)}")
        except ImportError:
            print("no PNG: matplotlib is not installed (pip install 'pytest-factedit[plot]')")
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    from .models import ModelLoadError
    from .report import summary_table
    from .session import FactEditSession, Options

    loaded = _case_and_settings(args, {"name": args.method})
    if loaded is None:
        return 2
    case, _ = loaded
    options = Options(model=args.model, device=args.device, method=args.method, seed=args.seed,
                      reports_dir=Path("reports"), run_id=None, localize=args.localize,
                      save_adapters=Path(args.save) if args.save else None)
    session = FactEditSession(options, is_worker=True)  # no report folder: the record is printed instead
    try:
        session.load_model()
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    record = session.record(args.case, case)
    print(summary_table([record], color=sys.stdout.isatty()), end="")
    if record["status"] != "ran":
        print(f"{record['status']}: {record['reason']}")
        return 1
    adapters = record.get("adapters") or {}
    if args.save:
        print(f"adapters: {adapters['dir']} ({', '.join(adapters['names'])})" if adapters.get("names")
              else f"not saved: {adapters.get('error')}")
    return 0 if all(m["passed"] for m in record["metrics"].values()) else 1


def cmd_import(args: argparse.Namespace) -> int:
    import shutil

    import yaml

    from .counterfact import case_mapping, known_records, read_records, sampled_records

    try:
        records = read_records(Path(args.file))
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.known_only:
        from .models import ModelLoadError, load

        try:
            lm = load(args.model, args.device)
        except ModelLoadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        chosen = list(known_records(lm.model, lm.tokenizer, records, args.n, args.seed))
    else:
        chosen = sampled_records(records, args.n, args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.defaults:
        shutil.copy(args.defaults, out / DEFAULTS_FILE)
    written = 0
    for record in chosen:
        mapping = case_mapping(record)
        path = out / f"{mapping['id']}.yaml"
        path.write_text(yaml.safe_dump(mapping, sort_keys=False, allow_unicode=True), encoding="utf-8")
        try:
            load_case(path, root=out)
        except CaseError as exc:  # a record schema v1 cannot hold: drop the file, say why
            path.unlink()
            print(f"skipped record {record['case_id']}: {exc}")
            continue
        written += 1
    known = f" the model answers correctly ({args.model})" if args.known_only else ""
    print(f"wrote {written} cases{known} to {out}" + ("" if (out / DEFAULTS_FILE).exists() else
          f"; shared controls: put a {DEFAULTS_FILE} there (--defaults fact_cases/{DEFAULTS_FILE})"))
    return 0 if written else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="factedit", description="pytest-factedit helper commands")
    sub = parser.add_subparsers(dest="command", required=True)
    validate = sub.add_parser("validate", help="check fact case YAML files against schema v1")
    validate.add_argument("paths", nargs="+", help="case files or folders")
    validate.add_argument("--root", help="top folder whose _defaults.yaml files apply (default: cwd)")
    validate.set_defaults(func=cmd_validate)
    prepare = sub.add_parser("prepare", help="load a model once (converting the embedded GGUF into the cache)")
    prepare.add_argument("--model", default=DEFAULT_MODEL)
    prepare.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    prepare.set_defaults(func=cmd_prepare)
    loc = sub.add_parser("localize", help="trace where a case's old answer is stored and print the heatmap")
    loc.add_argument("case", help="a fact case YAML file")
    loc.add_argument("--model", default=DEFAULT_MODEL)
    loc.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    loc.add_argument("--method", choices=("trace", "attribution"), default=None,
                     help="default: method.localize of the case when it traces, else trace")
    loc.add_argument("--seed", type=int, default=None)
    loc.add_argument("--png", default=None, metavar="PATH",
                     help="PNG path (default: <case-id>-localization.png when matplotlib is installed; '' for none)")
    loc.add_argument("--json", default=None, metavar="PATH", help="also write the localization record as JSON")
    loc.add_argument("--root", help="top folder whose _defaults.yaml files apply (default: cwd)")
    loc.set_defaults(func=cmd_localize)
    edit = sub.add_parser("edit", help="edit one case, print its metrics, optionally save the adapters")
    edit.add_argument("case", help="a fact case YAML file")
    edit.add_argument("--model", default=DEFAULT_MODEL)
    edit.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    edit.add_argument("--method", default=None, help="editing method (default: method.name of the case)")
    edit.add_argument("--localize", default=None, choices=("trace", "attribution", "none", "random"))
    edit.add_argument("--seed", type=int, default=None)
    edit.add_argument("--save", default=None, metavar="DIR",
                      help="write the adapters (peft format, one folder per stage) and manifest.json to DIR/<case-id>/")
    edit.add_argument("--root", help="top folder whose _defaults.yaml files apply (default: cwd)")
    edit.set_defaults(func=cmd_edit)
    imp = sub.add_parser("import", help="write schema-v1 cases from a public benchmark file")
    imp.add_argument("source", choices=("counterfact",))
    imp.add_argument("file", help="CounterFact JSON (a list of records)")
    imp.add_argument("--out", required=True, metavar="DIR")
    imp.add_argument("-n", type=int, default=100, help="how many cases (default 100)")
    imp.add_argument("--seed", type=int, default=0, help="seed of the record order")
    imp.add_argument("--known-only", action="store_true", help="keep only facts the model answers correctly")
    imp.add_argument("--model", default=DEFAULT_MODEL)
    imp.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    imp.add_argument("--defaults", metavar="FILE", help="copy this _defaults.yaml (shared controls) into DIR")
    imp.set_defaults(func=cmd_import)
    show = sub.add_parser("show", help="print the table of a run (reports/latest by default)")
    show.add_argument("results", nargs="?", default="reports/latest")
    show.set_defaults(func=cmd_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
