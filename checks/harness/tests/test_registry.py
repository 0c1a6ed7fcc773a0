"""The registry: parsed strictly, resolved flexibly, checked against the files on disk."""

from __future__ import annotations

import pytest

from checks.harness import registry


def kata_table(**overrides):
    exercise = {
        "name": "f",
        "title": "F",
        "difficulty": "easy",
        "hints": ["one", "two"],
        "after": "You built f.",
        "read": ["https://example.org/f"],
    }
    exercise.update(overrides.pop("exercise", {}))
    table = {"id": "w99_demo", "phase": "phase1", "title": "Demo", "difficulty": "easy", "exercises": [exercise]}
    table.update(overrides)
    return {"phases": [{"id": "phase1", "number": 1, "title": "One"}], "katas": [table]}


def test_the_real_registry_agrees_with_the_files():
    assert registry.load().problems() == []


def test_parse_names_the_bad_entry():
    with pytest.raises(registry.RegistryError, match=r"w99_demo.exercises\[0\].*title"):
        registry.parse(kata_table(exercise={"title": ""}))
    with pytest.raises(registry.RegistryError, match="not declared"):
        registry.parse(kata_table(phase="phase9"))
    with pytest.raises(registry.RegistryError, match="symbols"):
        registry.parse(kata_table(exercise={"symbols": ["g"]}))


def test_problems_report_missing_files_hints_and_markers():
    reg = registry.parse(
        kata_table(
            exercise={"hints": ["only one"], "markers": ["fast"], "after": "", "read": ["http://example.org"]},
            depends_on=["w00_none"],
        )
    )
    problems = "\n".join(reg.problems())
    assert "`after` must say" in problems
    assert "`read` must list 1 to 3 https:// links, got ['http://example.org']" in problems
    assert "katas/phase1/w99_demo.py is missing" in problems
    assert "checks/phase1/test_w99_demo.py is missing" in problems
    assert "has 1 hints" in problems
    assert "marker 'fast'" in problems
    assert "depends_on 'w00_none'" in problems


def test_resolve_accepts_phases_katas_exercises_symbols_and_unique_bare_names():
    reg = registry.parse(kata_table(exercise={"symbols": ["f", "g"]}))
    (exercise,) = reg.exercises
    assert reg.resolve(None) == (exercise,)
    assert reg.resolve("phase1") == reg.resolve("w99_demo") == reg.resolve("w99_demo.f") == (exercise,)
    assert reg.resolve("w99_demo.g") == reg.resolve("g") == (exercise,)
    with pytest.raises(KeyError, match="not a phase, kata or exercise"):
        reg.resolve("nothing")


def test_unknown_names_get_a_did_you_mean():
    reg = registry.load()
    with pytest.raises(KeyError, match=r"Did you mean w01_numpy\.softmax\?"):
        reg.resolve("softmx")
    with pytest.raises(KeyError, match=r"Did you mean w01_numpy\.softmax"):
        reg.resolve("w01_numpy.sofmax")
    with pytest.raises(KeyError, match="kata status --all"):
        reg.resolve("qwertyuiop")
