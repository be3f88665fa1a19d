#!/usr/bin/env bash
# Runs the steps of examples/ci/github-actions.yml on this machine, imitating three workflow runs:
#
#   1. main         a push to main: saves the baseline, uploads it, the HTML report and the junit XML;
#   2. pr           a pull request that changes nothing: downloads main's baseline, compares, must pass;
#   3. pr-weakened  a pull request whose case file weakens the edit (WEAKEN, appended to one case's YAML):
#                   the same comparison must fail (pytest exits non-zero), and its report is still uploaded.
#
# The `run:` blocks are read from the workflow file and run as they are, with bash -eo pipefail (as
# GitHub's `shell: bash` does), in a copy of this repository whose fact_cases/ holds only _defaults.yaml
# and CASES (2 cases: about a minute per run on 2 cores). `if:` conditions are evaluated for the event.
# The `uses:` steps are imitated: checkout = that copy; setup-python = PYTHON's environment; cache = the
# local FACTEDIT_CACHE as it is; upload-artifact = a copy into WORK/artifacts/<run>/<name>/;
# dawidd6/action-download-artifact = a copy from WORK/artifacts/main/<name>/; other actions are skipped.
#
# Usage:
#   examples/ci/run-locally.sh                                   # a fresh venv in WORK, the Install step runs
#   PYTHON=.venv/bin/python examples/ci/run-locally.sh           # reuse an environment: Install is skipped
# Environment: PYTHON, WORK (default: a new temporary folder, kept), CASES (default
# "norway-capital germany-capital"), WEAKEN (default "method: {learn_max_steps: 1}"), FACTEDIT_CACHE
# (default: the user cache, e.g. ~/.cache/pytest-factedit; an empty folder makes main convert the model),
# CHECK_ONLY=1 (with WORK: only the checks, on the runs an earlier call left there).
# Ends with "run-locally: PASS" (exit 0) or "run-locally: FAIL: ..." (exit 1).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
WORKFLOW=${WORKFLOW:-$HERE/github-actions.yml}
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/factedit-ci.XXXXXX")}
CASES=${CASES:-norway-capital germany-capital}
WEAKEN=${WEAKEN:-"method: {learn_max_steps: 1}"}
WEAKENED_CASE=${CASES%% *}

say() { printf '\n\033[1mrun-locally: %s\033[0m\n' "$*"; }
fail() { printf '\nrun-locally: FAIL: %s\n' "$*"; echo "(work folder: $WORK)"; exit 1; }

mkdir -p "$WORK/artifacts" "$WORK/logs"
say "workflow $WORKFLOW; work folder $WORK; cases: $CASES"

# --- the Python that runs the steps, and the environment it puts first on PATH ----------------------------
if [ -n "${CHECK_ONLY:-}" ]; then
  PYTHON=${PYTHON:-python3} BIN='' SKIP_STEPS=''
elif [ -n "${PYTHON:-}" ]; then
  PYTHON=$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")
  BIN=$(dirname "$PYTHON")
  SKIP_STEPS=install
  say "reusing $PYTHON: its folder goes first on PATH, the step 'install' is skipped"
else
  say "creating a fresh venv in $WORK/venv (the workflow's Install step fills it)"
  python3 -m venv "$WORK/venv" || fail "python3 -m venv"
  PYTHON=$WORK/venv/bin/python
  BIN=$WORK/venv/bin
  SKIP_STEPS=
fi
# The Python that reads the workflow (needs PyYAML), by absolute path: PATH changes for the steps.
RUNNER_PY=$(command -v "${RUNNER_PY:-python3}")
"$RUNNER_PY" -c 'import yaml' 2>/dev/null || RUNNER_PY=$REPO/.venv/bin/python
"$RUNNER_PY" -c 'import yaml' 2>/dev/null || RUNNER_PY=$PYTHON
"$RUNNER_PY" -c 'import yaml' 2>/dev/null || fail "no Python with PyYAML to read the workflow (set RUNNER_PY)"
export FACTEDIT_CACHE=${FACTEDIT_CACHE:-$("$RUNNER_PY" -c 'import platformdirs; print(platformdirs.user_cache_dir("pytest-factedit"))' 2>/dev/null || echo "$HOME/.cache/pytest-factedit")}
say "FACTEDIT_CACHE=$FACTEDIT_CACHE"

cat >"$WORK/runner.py" <<'PY'
"""Run one job of a GitHub Actions workflow locally: `run:` steps as they are, `uses:` steps imitated."""

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

workflow, job_name, event, checkout, artifacts, download_from, skip_ids, results = sys.argv[1:9]
checkout, artifacts, download_from = Path(checkout), Path(artifacts), Path(download_from)
skip_ids = set(skip_ids.split(",")) - {""}
spec = yaml.safe_load(Path(workflow).read_text())
job = spec["jobs"][job_name]
temp = Path(tempfile.mkdtemp(prefix="runner-temp."))
summary = temp / "step_summary.md"
env = dict(os.environ)
if env.get("RUNNER_BIN"):  # first on PATH again: a pyenv shim running this script puts its own bin first
    env["PATH"] = env["RUNNER_BIN"] + os.pathsep + env["PATH"]
env.update(
    CI="true", GITHUB_ACTIONS="true", GITHUB_EVENT_NAME=event, GITHUB_WORKSPACE=str(checkout),
    GITHUB_REF="refs/heads/main" if event == "push" else "refs/pull/1/merge", GITHUB_RUN_ID="1",
    GITHUB_RUN_ATTEMPT="1", RUNNER_OS="Linux", RUNNER_TEMP=str(temp), GITHUB_STEP_SUMMARY=str(summary),
)
outputs: dict = {}  # step id -> {key: value}
failed = False


def lookup(name):
    """A context value: github.*, env.*, runner.*, steps.<id>.outputs.<key>."""
    parts = name.split(".")
    if parts[0] == "github":
        return {"event_name": event, "ref": env["GITHUB_REF"], "workspace": str(checkout)}.get(parts[1], "")
    if parts[0] == "env":
        return env.get(parts[1], "")
    if parts[0] == "runner":
        return {"os": "Linux", "temp": str(temp)}.get(parts[1], "")
    if parts[0] == "steps" and len(parts) == 4 and parts[2] == "outputs":
        return outputs.get(parts[1], {}).get(parts[3], "")
    raise SystemExit(f"runner: unknown context {name!r}: extend lookup() for it")


TOKEN = re.compile(r"\s*(?:('(?:[^']|'')*')|(==|!=|&&|\|\||!|\(|\))|([A-Za-z_][\w.-]*)(\(\))?)")


def evaluate(expr):
    """A GitHub expression with the operators and functions this workflow uses; anything else stops."""
    expr = expr.strip()
    if expr.startswith("${{") and expr.endswith("}}"):
        expr = expr[3:-2].strip()
    out, pos, statusless = [], 0, True
    while pos < len(expr):
        m = TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise SystemExit(f"runner: cannot read the expression {expr!r} at {expr[pos:]!r}")
        pos = m.end()
        string, op, ident, call = m.groups()
        if string:
            out.append(repr(string[1:-1].replace("''", "'")))
        elif op:
            out.append({"&&": " and ", "||": " or ", "!": " not "}.get(op, op))
        elif call:
            funcs = {"always": "True", "success": "(not failed)", "failure": "failed", "cancelled": "False"}
            if ident not in funcs:
                raise SystemExit(f"runner: unknown function {ident}() in {expr!r}")
            out.append(funcs[ident])
            statusless = False
        elif ident in ("true", "false"):
            out.append(ident.title())
        else:
            out.append(repr(lookup(ident)))
    return "".join(out), statusless


def condition(expr):
    if expr is None:
        return not failed
    code, statusless = evaluate(str(expr))
    value = eval(code, {"__builtins__": {}}, {"failed": failed})
    return bool(value) and (not failed if statusless else True)


def substitute(value):
    def one(m):
        code, _ = evaluate(m.group(1))
        return str(eval(code, {"__builtins__": {}}, {"failed": failed}))

    return re.sub(r"\$\{\{(.*?)\}\}", one, str(value))


def read_kv(path):
    """GITHUB_OUTPUT / GITHUB_ENV: key=value lines and key<<DELIMITER blocks."""
    values, lines = {}, path.read_text().splitlines() if path.exists() else []
    i = 0
    while i < len(lines):
        line = lines[i]
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            key, delim = line.split("<<", 1)
            j = lines.index(delim, i + 1)
            values[key] = "\n".join(lines[i + 1 : j])
            i = j + 1
            continue
        if "=" in line:
            key, val = line.split("=", 1)
            values[key] = val
        i += 1
    return values


def files_of(patterns):
    """upload-artifact's `path:` lines (globs, folders, !exclusions) -> files, relative to their common folder."""
    keep, drop = set(), set()
    for raw in [p.strip() for p in patterns.splitlines() if p.strip()]:
        target = drop if raw.startswith("!") else keep
        for hit in glob.glob(str(checkout / raw.lstrip("!")), recursive=True):
            hit = Path(hit)
            target.update([p for p in hit.rglob("*") if p.is_file()] if hit.is_dir() else [hit])
    files = sorted(keep - drop)
    if not files:
        return None, []
    root = Path(os.path.commonpath([str(f.parent) for f in files]))
    return root, files


def imitate(uses, args):
    """A `uses:` step, imitated locally; returns its exit status."""
    action = uses.split("@")[0]
    if action == "actions/checkout":
        print(f"(local) checkout = the copy in {checkout}")
    elif action == "actions/setup-python":
        python = shutil.which("python", path=env["PATH"])
        print(f"(local) setup-python: python on PATH is {python}")
        subprocess.run([python, "--version"], env=env)
    elif action == "actions/cache":
        path = Path(os.path.expanduser(args["path"]))
        converted = sorted(p.name for p in path.glob("gemma3-270m-*")) if path.is_dir() else []
        print(f"(local) cache: key {args['key']}\n(local) cache: path {path} kept as it is; converted models in it: "
              f"{converted or 'none (the prepare step converts, about a minute)'}")
    elif action == "actions/upload-artifact":
        root, files = files_of(args["path"])
        dest = artifacts / args["name"]
        if not files:
            print(f"(local) upload-artifact {args['name']}: no files found (a warning on GitHub)")
            return 0
        shutil.rmtree(dest, ignore_errors=True)
        for f in files:
            (dest / f.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest / f.relative_to(root))
        print(f"(local) upload-artifact {args['name']}: {len(files)} files -> {dest}")
        for f in files:
            print(f"    {f.relative_to(checkout)}")
    elif action in ("dawidd6/action-download-artifact", "actions/download-artifact"):
        source, dest = download_from / args["name"], checkout / args.get("path", ".")
        if not source.is_dir():
            mode = args.get("if_no_artifact_found", "fail")
            print(f"(local) download-artifact {args['name']}: none in {download_from} (if_no_artifact_found: {mode})")
            return 1 if mode == "fail" else 0
        shutil.copytree(source, dest, dirs_exist_ok=True)
        print(f"(local) download-artifact {args['name']}: {source} -> {dest}")
        for f in sorted(dest.rglob("*")):
            print(f"    {f.relative_to(checkout)}")
    else:
        print(f"(local) {uses}: needs GitHub, skipped")
    return 0


env.update({k: substitute(v) for k, v in (spec.get("env") or {}).items()})
env.update({k: substitute(v) for k, v in (job.get("env") or {}).items()})
shell = (((job.get("defaults") or spec.get("defaults") or {}).get("run") or {}).get("shell")) or "bash"
if shell != "bash":
    raise SystemExit(f"runner: shell {shell!r}: only bash is imitated")
rows = []
for n, step in enumerate(job["steps"], 1):
    title = step.get("name") or step.get("uses") or step["run"].splitlines()[0]
    sid = step.get("id", f"step{n}")
    print(f"\n===== [{event}] step {n}: {title}", flush=True)
    if not condition(step.get("if")):
        print(f"----- skipped (if: {step.get('if', 'success()')})")
        rows.append((n, title, "skipped", ""))
        continue
    if sid in skip_ids:
        print(f"----- skipped locally (id {sid}: the environment is reused)")
        rows.append((n, title, "skipped-locally", ""))
        continue
    step_env = dict(env)
    step_env.update({k: substitute(v) for k, v in (step.get("env") or {}).items()})
    out_file, env_file = temp / f"output{n}", temp / f"env{n}"
    out_file.touch()
    env_file.touch()
    step_env.update(GITHUB_OUTPUT=str(out_file), GITHUB_ENV=str(env_file))
    if "run" in step:
        script = temp / f"step{n}.sh"
        script.write_text(substitute(step["run"]))
        print("----- run:\n" + "".join(f"    {line}\n" for line in step["run"].rstrip().splitlines()), end="", flush=True)
        rc = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
                            cwd=checkout, env=step_env).returncode
    else:
        args = {k: substitute(v) for k, v in (step.get("with") or {}).items()}
        env_before = dict(env)
        env = step_env
        rc = imitate(step["uses"], args)
        env = env_before
    outputs[sid] = read_kv(out_file)
    env.update(read_kv(env_file))
    soft = bool(step.get("continue-on-error"))
    print(f"----- exit {rc}" + (" (continue-on-error)" if rc and soft else ""), flush=True)
    rows.append((n, title, "ran", rc))
    if rc and not soft:
        failed = True
Path(results).write_text(json.dumps({"failed": failed, "steps": rows}, indent=1))
if summary.exists() and summary.read_text().strip():
    print(f"\n===== [{event}] $GITHUB_STEP_SUMMARY:\n{summary.read_text()}")
print(f"\n===== [{event}] job {'failed' if failed else 'succeeded'}")
sys.exit(1 if failed else 0)
PY

# --- one imitated workflow run ---------------------------------------------------------------------------
checkout() { # $1: run name -> WORK/$1: a copy of the repository, fact_cases/ cut down to CASES
  local dest=$WORK/$1
  rm -rf "$dest" && mkdir -p "$dest"
  (cd "$REPO" && git ls-files -co --exclude-standard -z | while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done |
    tar --null -T - -cf -) | tar -xf - -C "$dest" || fail "copying $REPO"
  rm -rf "$dest/fact_cases" && mkdir "$dest/fact_cases"
  cp "$REPO/fact_cases/_defaults.yaml" "$dest/fact_cases/"
  for c in $CASES; do cp "$REPO/fact_cases/$c.yaml" "$dest/fact_cases/" || fail "no case fact_cases/$c.yaml"; done
}

run_job() { # $1: run name, $2: event; artifacts downloaded come from the main run
  local name=$1 event=$2
  say "run '$name' (event $event) in $WORK/$name"
  RUNNER_BIN="$BIN" PATH="$BIN:$PATH" "$RUNNER_PY" "$WORK/runner.py" "$WORKFLOW" fact-edits "$event" "$WORK/$name" \
    "$WORK/artifacts/$name" "$WORK/artifacts/main" "$SKIP_STEPS" "$WORK/logs/$name.json" 2>&1 | tee "$WORK/logs/$name.log"
  local rc=${PIPESTATUS[0]}
  [ -f "$WORK/logs/$name.json" ] || fail "the runner stopped before the end of run '$name' (see above)"
  say "run '$name' ended with exit $rc"
  return "$rc"
}

if [ -n "${CHECK_ONLY:-}" ]; then # the checks alone, on the runs an earlier call left in WORK
  job_rc() { "$RUNNER_PY" -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["failed"]))' "$WORK/logs/$1.json" || echo 9; }
  MAIN_RC=$(job_rc main) PR_RC=$(job_rc pr) WEAK_RC=$(job_rc pr-weakened)
else
  checkout main
  run_job main push
  MAIN_RC=$?
  checkout pr
  run_job pr pull_request
  PR_RC=$?
  checkout pr-weakened
  say "weakening the edit of $WEAKENED_CASE: appending '$WEAKEN' to fact_cases/$WEAKENED_CASE.yaml"
  printf '%s\n' "$WEAKEN" >>"$WORK/pr-weakened/fact_cases/$WEAKENED_CASE.yaml"
  run_job pr-weakened pull_request
  WEAK_RC=$?
fi

# --- checks ----------------------------------------------------------------------------------------------
say "checks"
problems=()
check() { # $1: description, rest: command
  local what=$1
  shift
  if "$@"; then echo "  ok    $what"; else echo "  FAIL  $what"; problems+=("$what"); fi
}
step_rc() { # $1: run name, $2: step title -> prints its exit status (or skipped)
  "$RUNNER_PY" -c 'import json,sys; r=json.load(open(sys.argv[1])); print(next((str(s[3]) if s[2]=="ran" else s[2]) for s in r["steps"] if s[1]==sys.argv[2]))' \
    "$WORK/logs/$1.json" "$2" 2>/dev/null || echo missing
}
# shellcheck disable=SC2329 # called through check
junit_props() { # $1: junit file, $2: case|suite (which metric items), rest: properties each must carry
  "$RUNNER_PY" - "$@" <<'PY'
import os
import sys
import xml.etree.ElementTree as ET
path, kind, wanted = sys.argv[1], sys.argv[2], set(sys.argv[3:])
if not os.path.isfile(path):
    sys.exit(f"    {path}: missing")
cases = [c for c in ET.parse(path).getroot().iter("testcase") if c.get("classname", "").endswith(".suite") == (kind == "suite")]
lacking = [c.get("name") for c in cases if not wanted <= {p.get("name") for p in c.iter("property")}]
print(f"    {os.path.basename(os.path.dirname(os.path.dirname(path)))}: {len(cases)} {kind} items; "
      f"lacking one of {sorted(wanted)}: {lacking or 'none'}")
sys.exit(0 if cases and not lacking else 1)
PY
}

declare -A JOB_RC=([main]=$MAIN_RC [pr]=$PR_RC [pr-weakened]=$WEAK_RC)
for run in main pr pr-weakened; do
  echo "  $run: job exit ${JOB_RC[$run]}; steps (exit status):"
  "$RUNNER_PY" - "$WORK/logs/$run.json" <<'PY' || echo "    (no step results)"
import json, sys
for n, title, state, rc in json.load(open(sys.argv[1]))["steps"]:
    print(f"    {n:>2}. {title}: {rc if state == 'ran' else state}")
PY
done
PROPS=(metric value threshold samples protocol)
check "main: the job succeeds" test "$MAIN_RC" -eq 0
check "main: baseline.json, report.html, junit.xml written" test -s "$WORK/main/factedit-out/baseline.json" -a -s "$WORK/main/factedit-out/report.html" -a -s "$WORK/main/factedit-out/junit.xml"
check "main: artifact factedit-baseline uploaded" test -s "$WORK/artifacts/main/factedit-baseline/baseline.json"
check "main: artifact factedit-report holds report.html and junit.xml" test -s "$WORK/artifacts/main/factedit-report/report.html" -a -s "$WORK/artifacts/main/factedit-report/junit.xml"
check "main: junit case items carry ${PROPS[*]}" junit_props "$WORK/main/factedit-out/junit.xml" case "${PROPS[@]}"
check "main: junit suite items carry ${PROPS[*]}" junit_props "$WORK/main/factedit-out/junit.xml" suite "${PROPS[@]}"
check "pr: main's baseline downloaded" test -s "$WORK/pr/factedit-baseline/baseline.json"
check "pr: the job succeeds (no regression against main)" test "$PR_RC" -eq 0
check "pr: junit case items also carry baseline and delta" junit_props "$WORK/pr/factedit-out/junit.xml" case "${PROPS[@]}" baseline delta
check "pr: junit suite items also carry baseline and delta" junit_props "$WORK/pr/factedit-out/junit.xml" suite "${PROPS[@]}" baseline delta
check "pr: no baseline upload on a pull request" test ! -e "$WORK/artifacts/pr/factedit-baseline"
check "pr-weakened: the job fails" test "$WEAK_RC" -ne 0
check "pr-weakened: the failing step is 'Run the fact cases' (pytest exit 1)" test "$(step_rc pr-weakened 'Run the fact cases')" = 1
check "pr-weakened: pytest names the regression against the baseline" grep -q "worse than the baseline" "$WORK/logs/pr-weakened.log"
check "pr-weakened: the report is still uploaded (if: always())" test -s "$WORK/artifacts/pr-weakened/factedit-report/report.html" -a -s "$WORK/artifacts/pr-weakened/factedit-report/junit.xml"
check "pr-weakened: junit case items carry baseline and delta" junit_props "$WORK/pr-weakened/factedit-out/junit.xml" case "${PROPS[@]}" baseline delta
check "pr-weakened: junit holds the failures" grep -q "<failure" "$WORK/pr-weakened/factedit-out/junit.xml"

say "pr-weakened: pytest's failing lines"
grep -E "^(FAILED|ERROR) " "$WORK/logs/pr-weakened.log" | sed 's/^/  /'
echo
echo "logs: $WORK/logs/{main,pr,pr-weakened}.log"
if [ ${#problems[@]} -eq 0 ]; then
  echo "run-locally: PASS (main exit $MAIN_RC, pr exit $PR_RC, pr-weakened exit $WEAK_RC as expected; work folder $WORK)"
  exit 0
fi
fail "${#problems[@]} check(s) failed: $(printf '%s; ' "${problems[@]}")"
