"""``kata``: the learner's (and maintainer's) command line.

    kata status [--all]    where you are: one line per kata, the current one expanded (--all: every exercise)
    kata next              run the checks of the next unfinished exercise
    kata check [TARGET]    run the checks of an exercise, kata or phase (the current exercise when omitted,
                           everything with `all`); -v shows pytest's full report
    kata hint [EXERCISE]   the next hint for an exercise, the current one when omitted ("hint k of n")
    kata solution EXERCISE the reference solution, once you have passed the exercise
    kata watch [TARGET]    re-run checks every time you save
    kata reset EXERCISE    put the stub back (your version is kept in .kata/backups/)
    kata badges            SVG badges and shields.io endpoint JSON from progress.toml
    kata doctor            versions, CUDA, data, and what will be skipped here
    kata verify            maintainers: prove the checks against reference, stubs and mistakes

Heavy modules (pytest, rich, torch) are imported inside the commands that need them, so that
``kata check`` starts fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import paths, progress, registry
from .registry import Exercise, Registry


def _load() -> Registry:
    reg = registry.load()
    problems = reg.problems()
    if problems:
        raise SystemExit("The registry katas/curriculum.toml disagrees with the files:\n  " + "\n  ".join(problems))
    return reg


def _resolve(reg: Registry, target: str | None) -> tuple[Exercise, ...]:
    try:
        return reg.resolve(target)
    except KeyError as err:
        raise SystemExit(f"kata: {err.args[0]}") from None


def _one_exercise(reg: Registry, target: str) -> Exercise:
    exercises = _resolve(reg, target)
    if len(exercises) != 1:
        raise SystemExit(f"kata: {target!r} names {len(exercises)} exercises; name one, e.g. {exercises[0].id}")
    return exercises[0]


def next_exercise(reg: Registry, prog: progress.Progress) -> Exercise | None:
    """The first exercise, in curriculum order, that is not passed on the current checks."""
    return next((e for e in reg.exercises if progress.effective_status(reg, prog, e) != "passed"), None)


def _current(reg: Registry) -> Exercise | None:
    return next_exercise(reg, progress.load(paths.progress_file()))


def cmd_status(args: argparse.Namespace) -> int:
    from .ui import print_status

    reg = _load()
    prog = progress.load(paths.progress_file())
    print_status(reg, prog, next_exercise(reg, prog), every_exercise=args.all)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .runner import pytest_args, run_checks

    reg = _load()
    if args.target is None:
        exercise = _current(reg)
        if exercise is None:
            print("Every exercise passes. `kata check all` re-checks them all.")
            return 0
        print(f"Checking {exercise.id}, the current exercise (`kata check all` checks everything).")
        exercises: tuple[Exercise, ...] = (exercise,)
    else:
        exercises = _resolve(reg, None if args.target == "all" else args.target)
    if not exercises:
        print(f"{args.target}: no katas here yet.")
        return 0
    return run_checks(pytest_args(reg, exercises, args.pytest_args))


def cmd_next(args: argparse.Namespace) -> int:
    from .runner import pytest_args, run_checks

    reg = _load()
    exercise = next_exercise(reg, progress.load(paths.progress_file()))
    if exercise is None:
        print("Every exercise passes. Well done! `kata badges` makes badges of it.")
        return 0
    kata = reg.kata_of(exercise)
    print(f"Next: {exercise.id}: {exercise.title} ({exercise.difficulty}), in katas/{kata.phase}/{kata.id}.py")
    return run_checks(pytest_args(reg, [exercise], args.pytest_args))


def cmd_hint(args: argparse.Namespace) -> int:
    reg = _load()
    if args.exercise is None:
        exercise = _current(reg)
        if exercise is None:
            print("Every exercise passes; there is nothing left to hint.")
            return 0
    else:
        exercise = _one_exercise(reg, args.exercise)
    path = paths.progress_file()
    shown = progress.load(path).of(exercise.id).hints_shown
    total = len(exercise.hints)
    upto = total if args.all else min(shown + 1, total)
    for number in range(1, upto + 1):
        print(f"Hint {number} of {total} for {exercise.id}:\n  {exercise.hints[number - 1]}\n")
    if upto > shown:
        progress.record_hint(path, exercise.id, upto)
    if upto < total:
        print("Still stuck? Run the same command again for the next hint.")
    else:
        print(f"That was the last hint for {exercise.id}. `kata check {exercise.id}` says what still fails.")
    return 0


def cmd_solution(args: argparse.Namespace) -> int:
    from .ui import print_solution

    reg = _load()
    exercise = _one_exercise(reg, args.exercise)
    status = progress.effective_status(reg, progress.load(paths.progress_file()), exercise)
    if status not in ("passed", "stale"):
        print(
            f"{exercise.id} is {status}. The reference opens once your own solution passes: `kata check {exercise.id}`."
        )
        return 1
    print_solution(reg, exercise)
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    import shutil
    import time

    from .stubs import reset_file

    reg = _load()
    exercise = _one_exercise(reg, args.exercise)
    kata = reg.kata_of(exercise)
    path = paths.module_file(paths.KATAS_DIR, kata.phase, kata.id)
    backup = paths.STATE_DIR / "backups" / f"{kata.id}.{time.strftime('%Y%m%d-%H%M%S')}.py"
    backup.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(path, backup)
    try:
        changed = reset_file(path, exercise)
    except (SyntaxError, ValueError) as err:
        print(f"kata reset: cannot rewrite {path.relative_to(paths.ROOT)} ({err}); nothing was changed.")
        return 1
    progress.reset_exercise(paths.progress_file(), exercise.id)
    if changed:
        print(f"{exercise.id} is a stub again. Your version is kept in {backup.relative_to(paths.ROOT)}.")
    else:
        backup.unlink()
        print(f"{exercise.id} was already a stub; nothing to reset.")
    return 0


def cmd_badges(args: argparse.Namespace) -> int:
    from . import badges

    reg = _load()
    prog = progress.load(paths.progress_file())
    for problem in prog.problems:
        print(f"! {problem}")
    computed = badges.compute(reg, prog)
    written = badges.write(computed, args.out)
    for badge in computed:
        print(f"{badge.label}: {badge.message}")
    print(f"wrote {len(written)} files to {args.out}")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from .watch import watch

    return watch(_load(), args.target, poll=args.poll, clear=not args.no_clear)


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import doctor

    return doctor(_load())


def cmd_verify(args: argparse.Namespace) -> int:
    import os

    import pytest

    os.environ.setdefault("KATA_PROFILE", "verify")
    extra = list(args.pytest_args)
    if args.full:
        extra.append("--kata-verify-full")
    elif any(a == "-n" or a.startswith(("-n", "--numprocesses")) for a in extra):
        extra += ["--dist", "loadgroup"]  # each mistake's checks on one worker, so it stops at the first catch
    return int(pytest.main([str(paths.CHECKS_DIR), "--kata-verify", "-q", f"--rootdir={paths.ROOT}", *extra]))


def cmd_mutants(args: argparse.Namespace) -> int:
    from .mutants import main as mutants_main

    return mutants_main(
        _load(), args.katas, check=args.check, survivors_only=args.survivors, max_children=args.max_children
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kata", description="LLM katas: learn by making the checks pass.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func, help_text: str) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(func=func)
        return command

    status = add("status", cmd_status, "one line per kata with your progress, the current kata expanded")
    status.add_argument("--all", action="store_true", help="list every exercise of every kata")
    for name, func, help_text in (
        ("next", cmd_next, "run the checks of the next unfinished exercise"),
        ("check", cmd_check, "run the checks of the current exercise, or of an exercise, kata or phase"),
    ):
        command = add(name, func, help_text)
        if name == "check":
            command.add_argument(
                "target", nargs="?", help="w01_numpy.softmax, w01_numpy, phase1 or all (default: the current exercise)"
            )
        command.add_argument("-v", "--verbose", action="store_true", help="pytest's full report, not the short one")
        command.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: more pytest options")
    hint = add("hint", cmd_hint, "show the next hint for an exercise")
    hint.add_argument("exercise", nargs="?", help="default: the current exercise")
    hint.add_argument("--all", action="store_true", help="show every hint at once")
    add("solution", cmd_solution, "show the reference solution of an exercise you have passed").add_argument("exercise")
    watch = add("watch", cmd_watch, "re-run the checks every time you save")
    watch.add_argument("target", nargs="?", help="what to watch (default: the next unfinished exercise)")
    watch.add_argument("--poll", action="store_true", help="poll for changes (when file events do not arrive)")
    watch.add_argument("--no-clear", action="store_true", help="keep earlier runs on screen instead of clearing it")
    add("reset", cmd_reset, "restore an exercise's stub (your code is backed up)").add_argument("exercise")
    badges = add("badges", cmd_badges, "write SVG badges and shields.io endpoint JSON")
    badges.add_argument("--out", type=lambda p: __import__("pathlib").Path(p), default=paths.ROOT / "badges")
    add("doctor", cmd_doctor, "versions, CUDA, data and what will be skipped")
    verify = add("verify", cmd_verify, "maintainers: reference passes, stubs todo, mistakes caught, variants accepted")
    verify.add_argument("--full", action="store_true", help="run every check on every mistake (the full matrix)")
    verify.add_argument("pytest_args", nargs=argparse.REMAINDER, help="after --: more pytest options")
    mutants = add("mutants", cmd_mutants, "maintainers: mutation-test the reference against its checks")
    mutants.add_argument("katas", nargs="*", help="katas to mutate (default: all)")
    mutants.add_argument("--check", action="store_true", help="only check that the recorded runs are current")
    mutants.add_argument("--survivors", action="store_true", help="re-test only the last run's survivors (quick)")
    mutants.add_argument("--max-children", type=int, help="mutants tested in parallel (default: CPU count)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "pytest_args", None) and args.pytest_args[0] == "--":
        args.pytest_args = args.pytest_args[1:]
    if (getattr(args, "target", None) or "").startswith("-"):  # `kata check -- -x`: no target, only pytest options
        args.pytest_args = [args.target, *args.pytest_args]
        args.target = None
    if getattr(args, "verbose", False):
        args.pytest_args = ["-v", *args.pytest_args]
    try:
        code = args.func(args)
        sys.stdout.flush()  # here, where a closed pipe can still be handled
        return code
    except registry.RegistryError as err:
        print(f"kata: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `kata hint | head` closed the pipe early: nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush cannot fail again
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
