"""progress.toml: atomic, forgiving of corruption and hand edits, comment-preserving, never lossy."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from checks.harness import progress, registry
from checks.harness.outcomes import FAILED, PASSED, SKIPPED, TODO, CheckResult

REGISTRY = registry.load()
EXERCISE = REGISTRY.exercises[0]


def results(*outcomes: str) -> dict[str, list[CheckResult]]:
    return {EXERCISE.id: [CheckResult(f"t{i}", EXERCISE.id, o) for i, o in enumerate(outcomes)]}


def entry(path: Path) -> progress.ExerciseProgress:
    return progress.load(path).of(EXERCISE.id)


def test_a_run_records_status_counts_first_pass_and_fingerprint(tmp_path):
    path = tmp_path / "progress.toml"
    progress.record_run(path, REGISTRY, results(PASSED, PASSED))
    recorded = entry(path)
    assert (recorded.status, recorded.checks_passed, recorded.checks_total) == ("passed", 2, 2)
    assert recorded.first_passed is not None and recorded.fingerprint
    assert progress.effective_status(REGISTRY, progress.load(path), EXERCISE) == "passed"


def test_todo_failing_and_first_passed_is_kept_after_a_later_failure(tmp_path):
    path = tmp_path / "progress.toml"
    progress.record_run(path, REGISTRY, results(TODO, TODO))
    assert entry(path).status == "todo"
    progress.record_run(path, REGISTRY, results(PASSED, PASSED))
    first = entry(path).first_passed
    progress.record_run(path, REGISTRY, results(PASSED, FAILED))
    assert entry(path).status == "failing"
    assert entry(path).first_passed == first


def test_comments_and_unknown_keys_survive_a_write(tmp_path):
    path = tmp_path / "progress.toml"
    path.write_text(
        f'# my notes\nversion = 1\nmotto = "keep going"\n\n[exercises.{EXERCISE.kata}.{EXERCISE.name}]\n'
        'status = "todo"  # started on the train\nmood = "curious"\n',
        encoding="utf-8",
    )
    progress.record_run(path, REGISTRY, results(PASSED))
    text = path.read_text(encoding="utf-8")
    assert "# my notes" in text and 'motto = "keep going"' in text and 'mood = "curious"' in text
    assert entry(path).status == "passed"


def test_a_corrupt_file_is_backed_up_reported_and_replaced(tmp_path):
    path = tmp_path / "progress.toml"
    original = "this is [not toml\n"
    path.write_text(original, encoding="utf-8")
    loaded = progress.load(path)
    assert loaded.problems and "not valid TOML" in loaded.problems[0]
    backups = list(tmp_path.glob("progress.toml.corrupt-*.bak"))
    assert len(backups) == 1 and backups[0].read_text(encoding="utf-8") == original
    progress.record_run(path, REGISTRY, results(PASSED))
    assert entry(path).status == "passed"
    assert backups[0].read_text(encoding="utf-8") == original


def test_hand_edited_nonsense_is_ignored_reported_and_backed_up_before_writing(tmp_path):
    path = tmp_path / "progress.toml"
    original = (
        f'version = 1\n[exercises.{EXERCISE.kata}.{EXERCISE.name}]\nstatus = "done!!"\nhints_shown = "two"\n'
        '[exercises.w99_other.thing]\nstatus = "passed"\n'
    )
    path.write_text(original, encoding="utf-8")
    loaded = progress.load(path)
    assert any("status = 'done!!'" in p for p in loaded.problems)
    assert loaded.of(EXERCISE.id).status == "todo"
    update = progress.record_run(path, REGISTRY, results(TODO))
    assert any("kept in" in p for p in update.problems)
    (backup,) = tmp_path.glob("progress.toml.hand-edited-*.bak")
    assert backup.read_text(encoding="utf-8") == original
    assert progress.load(path).of("w99_other.thing").status == "passed"  # what we do not know is kept


def test_a_failed_write_leaves_the_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "progress.toml"
    progress.record_run(path, REGISTRY, results(PASSED))
    before = path.read_text(encoding="utf-8")

    def crash(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        progress.record_run(path, REGISTRY, results(FAILED))
    assert path.read_text(encoding="utf-8") == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_concurrent_writers_do_not_lose_each_others_updates(tmp_path):
    path = tmp_path / "progress.toml"
    ids = [e.id for e in REGISTRY.exercises[:1]] + [f"w99_fake.ex{i}" for i in range(7)]
    threads = [threading.Thread(target=progress.record_hint, args=(path, i, 1)) for i in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    loaded = progress.load(path)
    assert all(loaded.of(i).hints_shown == 1 for i in ids)


def test_changed_checks_make_a_pass_stale(tmp_path):
    path = tmp_path / "progress.toml"
    progress.record_run(path, REGISTRY, results(PASSED))
    text = path.read_text(encoding="utf-8").replace(entry(path).fingerprint, "0000000000000000")
    path.write_text(text, encoding="utf-8")
    assert progress.effective_status(REGISTRY, progress.load(path), EXERCISE) == "stale"


def test_an_exercise_whose_checks_all_skipped_keeps_what_was_recorded(tmp_path):
    path = tmp_path / "progress.toml"
    progress.record_run(path, REGISTRY, results(PASSED))
    progress.record_run(path, REGISTRY, results(SKIPPED, SKIPPED))
    assert entry(path).status == "passed" and entry(path).checks_total == 1
