"""Mutation testing of the reference: the mechanical proof that the checks specify what they check.

``kata mutants [KATA ...]`` (or ``nox -s mutants -- KATA ...``) runs mutmut on
``reference/<phase>/<kata>.py`` with that kata's fast checks (and the slow ones marked ``mutation``) under
``--impl reference``: every small edit of the reference (``+`` for ``-``, ``<`` for ``<=``, a changed
constant ...) must make some check fail. A mutant that survives is either a gap in the checks, to be closed
with a sharper check, or *equivalent*: no caller can tell it apart from the reference through the documented
contract. Equivalent mutants are recorded, each with a one-line reason, in ``checks/mutants/<kata>.toml``,
keyed by the function and the mutated source text (not by mutmut's running number), so a record survives
unrelated edits.

Each full run also records a fingerprint of the kata's reference and checks. ``kata mutants --check``
(run by CI) fails when a kata's record is missing, stale (its reference or checks changed since) or
shows undocumented survivors, so the evidence in the repository is always current without re-running
every mutant on every change.

The wording of an error message is not part of a kata's contract beyond naming the offending value (a
learner's message will differ, and checks verify that the value is named), so every ``raise`` statement
is excluded from mutation: its condition is still mutated, its message text is not.

Each kata runs in its own working copy under ``.kata/mutants/<kata>/``, so katas can run side by side.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import tomlkit

from . import paths
from .registry import Kata, Registry

RECORDS_DIR = paths.CHECKS_DIR / "mutants"
WORK_DIR = paths.STATE_DIR / "mutants"
NO_MUTATE = "# pragma: no mutate block  (error wording is not contract)"

KILLED = {"killed", "timeout", "segfault", "caught by type check"}
# Everything else ("survived", "no tests", "suspicious", "skipped", "not checked") needs a look.

RECORD_HEADER = """\
Mutation testing of {reference} with the checks in {checks}.
Run `nox -s mutants -- {kata}` after changing either file. Every surviving mutant is killed by a sharper
check or listed under [[equivalent]] with a one-line reason: no caller can tell it apart from the
reference through the documented contract. [last_run] is written by the tool; CI fails when its
fingerprint no longer matches the two files or when it shows a survivor that is not listed here.
"""


@dataclass(frozen=True)
class Mutant:
    name: str  # mutmut's name, e.g. reference.phase1.w01_numpy.x_softmax__mutmut_3
    status: str
    function: str = ""  # "softmax", or "Class.method"
    original: str = ""  # the changed lines of the reference, whitespace collapsed
    mutated: str = ""  # the same lines in the mutant
    diff: str = ""


@dataclass
class KataResult:
    kata: str
    mutants: int = 0
    killed: int = 0
    equivalent: int = 0
    survivors: list[Mutant] = field(default_factory=list)
    unused_records: list[dict] = field(default_factory=list)
    seconds: float = 0.0


# Checks with these marks never run under mutation testing, so their code cannot change a run's result.
UNMUTATED_MARKS = {"perf", "gpu"}


def _marks(node: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    """The ``pytest.mark.<name>`` names a function is decorated with (``@pytest.mark.gpu``, ``@pytest.mark.x(...)``)."""
    names = set()
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(target, ast.Attribute) and ast.unparse(target.value) == "pytest.mark":
            names.add(target.attr)
    return names


def _code_only(source: str) -> str:
    """The module's syntax tree without docstrings, and without benchmarks and GPU checks: comments, docstrings
    and checks that mutation testing does not run cannot change a mutation run."""
    tree = ast.parse(source)
    tree.body = [
        node for node in tree.body
        if not (isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _marks(node) & UNMUTATED_MARKS)
    ]
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


def fingerprint(kata: Kata) -> str:
    """sha256 over the code of the kata's reference and check files, the two files a mutation run depends on.

    Only the code that a mutation run executes counts, so that rewording a docstring or a comment, or changing a
    benchmark or a GPU check, does not call for a new run.
    """
    digest = hashlib.sha256()
    for path in (paths.module_file(paths.REFERENCE_DIR, kata.phase, kata.id), kata.check_file):
        code = _code_only(path.read_text(encoding="utf-8"))
        digest.update(path.relative_to(paths.ROOT).as_posix().encode() + b"\0" + code.encode() + b"\0")
    return digest.hexdigest()


def record_file(kata_id: str) -> Path:
    return RECORDS_DIR / f"{kata_id}.toml"


def load_record(kata_id: str) -> tomlkit.TOMLDocument:
    path = record_file(kata_id)
    return tomlkit.parse(path.read_text(encoding="utf-8")) if path.exists() else tomlkit.document()


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _same_mutation(record: dict, mutant: Mutant) -> bool:
    return (
        record.get("function") == mutant.function
        and _collapse(record.get("original", "")) == mutant.original
        and _collapse(record.get("mutated", "")) == mutant.mutated
    )


def triage(kata_id: str, mutants: list[Mutant], seconds: float) -> KataResult:
    """Sort a run's mutants into killed, recorded-equivalent and surviving."""
    records = list(load_record(kata_id).get("equivalent", []))
    result = KataResult(kata_id, mutants=len(mutants), seconds=seconds)
    used = set()
    for mutant in mutants:
        if mutant.status in KILLED:
            result.killed += 1
            continue
        match = next((i for i, r in enumerate(records) if _same_mutation(r, mutant)), None)
        if match is None:
            result.survivors.append(mutant)
        else:
            used.add(match)
            result.equivalent += 1
    result.unused_records = [dict(r) for i, r in enumerate(records) if i not in used]
    return result


def write_last_run(kata: Kata, result: KataResult, mutmut_version: str) -> None:
    """Record the run's counts and the fingerprint of the files it tested, keeping the equivalents."""
    old = load_record(kata.id)
    reference = paths.module_file(paths.REFERENCE_DIR, kata.phase, kata.id).relative_to(paths.ROOT).as_posix()
    checks = kata.check_file.relative_to(paths.ROOT).as_posix()
    doc = tomlkit.document()
    for line in RECORD_HEADER.format(reference=reference, checks=checks, kata=kata.id).splitlines():
        doc.add(tomlkit.comment(line))
    doc.add(tomlkit.nl())
    last = tomlkit.table()
    last["fingerprint"] = fingerprint(kata)
    last["mutants"] = result.mutants
    last["killed"] = result.killed
    last["equivalent"] = result.equivalent
    last["survived"] = len(result.survivors)
    last["seconds"] = round(result.seconds, 1)
    last["mutmut"] = mutmut_version
    doc["last_run"] = last
    if old.get("equivalent"):
        doc["equivalent"] = old["equivalent"]
    RECORDS_DIR.mkdir(parents=True, exist_ok=True)
    record_file(kata.id).write_text(tomlkit.dumps(doc), encoding="utf-8")


def record_problems(registry: Registry, kata_ids: list[str] | None = None) -> list[str]:
    """Why the recorded evidence of each kata is not current (empty when every record is)."""
    problems = []
    for kata in registry.katas:
        if kata_ids and kata.id not in kata_ids:
            continue
        last = load_record(kata.id).get("last_run")
        where = f"checks/mutants/{kata.id}.toml"
        if last is None:
            problems.append(f"{kata.id}: no mutation run is recorded ({where}); run `nox -s mutants -- {kata.id}`")
        elif last.get("fingerprint") != fingerprint(kata):
            problems.append(
                f"{kata.id}: the reference or the checks changed since the last mutation run ({where}); "
                f"run `nox -s mutants -- {kata.id}`"
            )
        elif last.get("survived", 1):
            problems.append(f"{kata.id}: {last.get('survived')} mutant(s) survived the last run undocumented")
    return problems


# --------------------------------------------------------------------------------------------------
# running mutmut in a working copy


def exclude_raise_statements(source: str) -> str:
    """Put mutmut's block pragma before every ``raise``: a raise ends its block, so only it is excluded."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    starts = sorted({node.lineno for node in ast.walk(tree) if isinstance(node, ast.Raise)}, reverse=True)
    for lineno in starts:
        line = lines[lineno - 1]
        indent = line[: len(line) - len(line.lstrip())]
        if line.lstrip().startswith("raise"):  # not `if x: raise ...` on one line
            lines.insert(lineno - 1, f"{indent}{NO_MUTATE}\n")
    result = "".join(lines)
    ast.parse(result)
    return result


# The fast checks, and the slow ones marked `mutation` (the only checks that observe a training recipe).
MARKERS = "(not slow or mutation) and not perf and not gpu"


def _mutmut_config(kata: Kata) -> str:
    reference = paths.module_file(Path("reference"), kata.phase, kata.id).as_posix()
    checks = Path("checks", kata.phase, f"test_{kata.id}.py").as_posix()
    return f"""\
[tool.mutmut]
source_paths = ["{reference}"]
also_copy = ["reference", "katas", "checks"]
pytest_add_cli_args = ["--impl", "reference", "-m", "{MARKERS}", "-p", "no:cacheprovider"]
pytest_add_cli_args_test_selection = ["{checks}"]
use_git_change_detection = false

[tool.pytest.ini_options]
testpaths = ["checks"]
timeout = 60
"""


def _copy_tree(name: str, into: Path) -> None:
    target = into / name
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(paths.ROOT / name, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def prepare(kata: Kata, keep: bool) -> Path:
    """The kata's working copy: the project's code, its mutmut configuration, raises excluded.

    With ``keep``, mutmut's earlier results stay and only the checks are refreshed (the reference must
    not have changed, or the recorded mutants would no longer be the reference's).
    """
    work = WORK_DIR / kata.id
    if not keep and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    for name in ("reference", "katas", "checks"):
        _copy_tree(name, work)
    if keep:
        _copy_tree("checks", work / "mutants")  # the sharpened checks; the mutated reference stays
    (work / "pyproject.toml").write_text(_mutmut_config(kata), encoding="utf-8")
    reference = paths.module_file(work / "reference", kata.phase, kata.id)
    reference.write_text(exclude_raise_statements(reference.read_text(encoding="utf-8")), encoding="utf-8")
    return work


_DIFF_SCRIPT = """
import json, sys
from pathlib import Path
from mutmut.mutation.diff_apply import get_diff_for_mutant
path, names = sys.argv[1], sys.argv[2:]
print(json.dumps({name: get_diff_for_mutant(name, path=Path(path)) for name in names}))
"""


def _function_of(name: str) -> str:
    """``softmax`` or ``Class.method`` from a mutmut name such as ``pkg.mod.xǁClassǁmethod__mutmut_3``."""
    local = name.rsplit(".", 1)[-1].rsplit("__mutmut_", 1)[0]
    if local.startswith("xǁ"):
        return ".".join(local[2:].split("ǁ"))
    return local[2:] if local.startswith("x_") else local


def _changed_lines(diff: str) -> tuple[str, str]:
    body = [line for line in diff.splitlines() if not line.startswith(("---", "+++", "@@"))]
    original = "\n".join(line[1:] for line in body if line.startswith("-"))
    mutated = "\n".join(line[1:] for line in body if line.startswith("+"))
    return _collapse(original), _collapse(mutated)


def collect(kata: Kata, work: Path) -> list[Mutant]:
    """Every mutant of the kata's reference with its status, and for those not killed, what changed."""
    source = paths.module_file(Path("reference"), kata.phase, kata.id)
    meta = json.loads((work / "mutants" / f"{source.as_posix()}.meta").read_text(encoding="utf-8"))
    from mutmut.stats import status_by_exit_code

    statuses = {name: status_by_exit_code[code] for name, code in meta["exit_code_by_key"].items()}
    open_names = [n for n, s in statuses.items() if s not in KILLED]
    diffs = {}
    if open_names:
        out = subprocess.run(
            [sys.executable, "-c", _DIFF_SCRIPT, source.as_posix(), *open_names],
            cwd=work,
            capture_output=True,
            text=True,
            check=True,
        )
        diffs = json.loads(out.stdout.strip().splitlines()[-1])
    mutants = []
    for name, status in sorted(statuses.items()):
        if name in diffs:
            original, mutated = _changed_lines(diffs[name])
            mutants.append(Mutant(name, status, _function_of(name), original, mutated, diffs[name]))
        else:
            mutants.append(Mutant(name, status, _function_of(name)))
    return mutants


def _reference_digest(kata: Kata) -> str:
    return hashlib.sha256(paths.module_file(paths.REFERENCE_DIR, kata.phase, kata.id).read_bytes()).hexdigest()


def run_kata(kata: Kata, *, max_children: int | None, survivors_only: bool) -> KataResult:
    """Run mutmut on the kata; ``survivors_only`` re-tests just the mutants that survived the last run here
    (quick while sharpening checks; it records nothing, since it is not a full run)."""
    stamp = WORK_DIR / kata.id / "reference.sha256"
    keep = survivors_only and stamp.exists() and stamp.read_text() == _reference_digest(kata)
    work = prepare(kata, keep=keep)
    names: list[str] = []
    if keep:
        names = [m.name for m in collect(kata, work) if m.status not in KILLED]
        if not names:
            return triage(kata.id, collect(kata, work), 0.0)
    # One torch thread per mutmut child: the children already run side by side on the cores.
    env = {**os.environ, "KATA_PROFILE": "verify", "PYTHONHASHSEED": "0", "MUTANT_UNDER_TEST": ""}
    env["OMP_NUM_THREADS"] = "1"
    env.pop("PYTEST_ADDOPTS", None)
    command = [sys.executable, "-m", "mutmut", "run", *names]
    if max_children:
        command += ["--max-children", str(max_children)]
    started = time.monotonic()
    with open(work / "mutmut.log", "w", encoding="utf-8") as out:
        code = subprocess.run(command, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    seconds = time.monotonic() - started
    stamp.write_text(_reference_digest(kata))
    if code != 0:
        tail = (work / "mutmut.log").read_text(encoding="utf-8", errors="replace")[-3000:]
        raise RuntimeError(f"mutmut failed for {kata.id} (exit {code}); see {work / 'mutmut.log'}:\n{tail}")
    return triage(kata.id, collect(kata, work), seconds)


# --------------------------------------------------------------------------------------------------
# reporting


def format_table(results: list[KataResult]) -> list[str]:
    header = ("kata", "mutants", "killed", "equivalent", "survived", "time")
    rows = [
        (r.kata, str(r.mutants), str(r.killed), str(r.equivalent), str(len(r.survivors)), f"{r.seconds:.0f}s")
        for r in results
    ]
    totals = [sum(int(row[i]) for row in rows) for i in range(1, 5)]
    rows.append(("total", *map(str, totals), f"{sum(r.seconds for r in results):.0f}s"))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(row):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    return [line(header), "  ".join("-" * w for w in widths), *map(line, rows)]


def recorded_results(registry: Registry, kata_ids: list[str] | None) -> list[KataResult]:
    """The table of the last recorded runs (what ``--check`` shows)."""
    results = []
    for kata in registry.katas:
        if kata_ids and kata.id not in kata_ids:
            continue
        last = load_record(kata.id).get("last_run", {})
        result = KataResult(
            kata.id,
            mutants=int(last.get("mutants", 0)),
            killed=int(last.get("killed", 0)),
            equivalent=int(last.get("equivalent", 0)),
            seconds=float(last.get("seconds", 0.0)),
        )
        result.survivors = [Mutant("?", "survived")] * int(last.get("survived", 0))
        results.append(result)
    return results


README_BLOCK = re.compile(r"(<!-- mutation-table -->\n).*?(<!-- /mutation-table -->)", re.S)


def markdown_table(results: list[KataResult]) -> str:
    """The README's table of the recorded runs."""
    rows = ["| kata | mutants | killed | equivalent | survived | time |", "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        rows.append(
            f"| `{r.kata}` | {r.mutants} | {r.killed} | {r.equivalent} | {len(r.survivors)} | {r.seconds:.0f} s |"
        )
    return "\n".join(rows) + "\n"


def update_readme(registry: Registry) -> None:
    """Rewrite the README's mutation table from the records (the README never drifts from them)."""
    readme = paths.ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    table = markdown_table(recorded_results(registry, None))
    updated = README_BLOCK.sub(lambda m: m.group(1) + table + m.group(2), text)
    if updated != text:
        readme.write_text(updated, encoding="utf-8")


def describe_survivor(mutant: Mutant) -> str:
    diff = re.sub(r"^(---|\+\+\+) .*\n", "", mutant.diff, flags=re.M)
    return (
        f"{mutant.name} ({mutant.status}) in {mutant.function}:\n{diff}\n"
        f"  to record it as equivalent, add to the kata's checks/mutants file:\n"
        f"    [[equivalent]]\n    function = {json.dumps(mutant.function)}\n"
        f"    original = {json.dumps(mutant.original, ensure_ascii=False)}\n"
        f"    mutated = {json.dumps(mutant.mutated, ensure_ascii=False)}\n"
        f'    reason = "..."'
    )


def main(registry: Registry, kata_ids: list[str], *, check: bool, survivors_only: bool, max_children: int | None,
         write=print) -> int:
    unknown = [k for k in kata_ids if k not in {kata.id for kata in registry.katas}]
    if unknown:
        write(f"unknown kata(s): {', '.join(unknown)}; katas: {', '.join(k.id for k in registry.katas)}")
        return 2
    if check:
        for text in format_table(recorded_results(registry, kata_ids)):
            write(text)
        problems = record_problems(registry, kata_ids)
        for problem in problems:
            write(f"  - {problem}")
        if not problems:
            write("mutation records are current: every surviving mutant is documented as equivalent")
        return 1 if problems else 0
    from importlib.metadata import version

    results = []
    for kata in (k for k in registry.katas if not kata_ids or k.id in kata_ids):
        write(f"mutating {kata.id} ...")
        result = run_kata(kata, max_children=max_children, survivors_only=survivors_only)
        if not survivors_only:
            write_last_run(kata, result, version("mutmut"))
            update_readme(registry)
        results.append(result)
        for record in result.unused_records:
            write(f"  {kata.id}: recorded equivalent no longer survives, remove it: {dict(record)}")
        for mutant in result.survivors:
            write(describe_survivor(mutant))
    for text in format_table(results):
        write(text)
    undocumented = sum(len(r.survivors) for r in results)
    if undocumented:
        write(f"{undocumented} surviving mutant(s) are neither killed nor documented as equivalent")
    return 1 if undocumented else 0
