"""Mutation records: survivors matched by function and text, stale fingerprints and raise exclusion."""

from __future__ import annotations

import ast

import pytest

from checks.harness import mutants, registry
from checks.harness.mutants import Mutant


@pytest.fixture
def records(tmp_path, monkeypatch):
    monkeypatch.setattr(mutants, "RECORDS_DIR", tmp_path)
    return tmp_path


def _survivor(original="e = np.exp(x - m)", mutated="e = np.exp(x + m)", function="softmax"):
    return Mutant("reference.phase1.w01_numpy.x_softmax__mutmut_1", "survived", function, original, mutated)


def test_survivors_match_records_by_function_and_text_not_by_number(records):
    (records / "w01_numpy.toml").write_text(
        '[[equivalent]]\nfunction = "softmax"\noriginal = "e = np.exp(x  -  m)"\n'
        'mutated = "e = np.exp(x + m)"\nreason = "r"\n'
        '[[equivalent]]\nfunction = "log_softmax"\noriginal = "a"\nmutated = "b"\nreason = "gone"\n',
        encoding="utf-8",
    )
    killed = Mutant("reference.phase1.w01_numpy.x_softmax__mutmut_2", "killed", "softmax")
    other = _survivor(function="CharVocab.encode")
    result = mutants.triage("w01_numpy", [_survivor(), killed, other], 1.0)
    assert (result.mutants, result.killed, result.equivalent) == (3, 1, 1)
    assert result.survivors == [other]  # same text, other function: not the recorded one
    assert [r["function"] for r in result.unused_records] == ["log_softmax"]


def test_a_record_is_stale_when_the_reference_or_checks_change(records):
    reg = registry.load()
    kata = reg.kata("w01_numpy")
    assert "no mutation run is recorded" in mutants.record_problems(reg, ["w01_numpy"])[0]
    mutants.write_last_run(kata, mutants.KataResult("w01_numpy", mutants=2, killed=2), "3.8")
    assert mutants.record_problems(reg, ["w01_numpy"]) == []
    text = (records / "w01_numpy.toml").read_text(encoding="utf-8")
    (records / "w01_numpy.toml").write_text(text.replace(mutants.fingerprint(kata), "0" * 64), encoding="utf-8")
    assert "changed since the last mutation run" in mutants.record_problems(reg, ["w01_numpy"])[0]
    with_survivor = mutants.KataResult("w01_numpy", mutants=2, killed=1, survivors=[_survivor()])
    mutants.write_last_run(kata, with_survivor, "3.8")
    assert "1 mutant(s) survived" in mutants.record_problems(reg, ["w01_numpy"])[0]


def test_writing_a_run_keeps_the_recorded_equivalents(records):
    kata = registry.load().kata("w01_numpy")
    (records / "w01_numpy.toml").write_text(
        '[[equivalent]]\nfunction = "f"\noriginal = "a"\nmutated = "b"\nreason = "kept"\n', encoding="utf-8"
    )
    mutants.write_last_run(kata, mutants.KataResult("w01_numpy", mutants=1, equivalent=1), "3.8")
    record = mutants.load_record("w01_numpy")
    assert record["equivalent"][0]["reason"] == "kept"
    assert record["last_run"]["fingerprint"] == mutants.fingerprint(kata)


def test_raise_statements_are_excluded_from_mutation_and_nothing_else():
    source = (
        "def f(x):\n"
        "    if x < 0:\n"
        "        raise ValueError(\n"
        "            f'x must be >= 0, got {x}'\n"
        "        )\n"
        "    if x > 9: raise ValueError(x)\n"
        "    return x + 1\n"
    )
    result = mutants.exclude_raise_statements(source)
    ast.parse(result)
    lines = result.splitlines()
    assert lines[2].strip() == mutants.NO_MUTATE and lines[3].strip().startswith("raise ValueError(")
    assert result.count(mutants.NO_MUTATE) == 1  # the one-line `if ...: raise` keeps its condition mutable


def test_mutant_names_and_diffs_are_read_as_function_and_changed_lines():
    assert mutants._function_of("reference.phase1.w01_numpy.x_softmax__mutmut_3") == "softmax"
    assert mutants._function_of("reference.phase1.w01_numpy.xǁCharVocabǁencode__mutmut_12") == "CharVocab.encode"
    diff = "--- a.py\n+++ a.py\n@@ -1,3 +1,3 @@\n def f(x):\n-    return x  +  1\n+    return x - 1\n"
    assert mutants._changed_lines(diff) == ("return x + 1", "return x - 1")


def test_the_readme_shows_the_recorded_runs():
    readme = (mutants.paths.ROOT / "README.md").read_text(encoding="utf-8")
    block = mutants.README_BLOCK.search(readme)
    assert block, "README.md lost its <!-- mutation-table --> block"
    expected = mutants.markdown_table(mutants.recorded_results(registry.load(), None))
    assert expected in block.group(0), "README's mutation table differs from checks/mutants/; run `kata mutants`"


def test_the_fingerprint_sees_code_but_not_docstrings_or_comments():
    from checks.harness.mutants import _code_only

    source = 'def f(x):\n    """Doubles x."""\n    return 2 * x  # twice\n'
    assert _code_only(source) == _code_only(source.replace("Doubles x.", "Twice x.").replace("# twice", "# 2x"))
    assert _code_only(source) != _code_only(source.replace("2 * x", "3 * x"))
    assert _code_only(source) != _code_only(source.replace('"""Doubles x."""', 'print("Doubles x.")'))


def test_the_fingerprint_leaves_out_benchmarks_and_gpu_checks():
    from checks.harness.mutants import _code_only

    source = "import pytest\n\n\ndef test_fast():\n    assert 1\n"
    bench = "\n\n@pytest.mark.perf\n@pytest.mark.exercise('x')\ndef test_speed(benchmark):\n    assert {n}\n"
    gpu = "\n\n@pytest.mark.gpu\ndef test_cuda():\n    assert {n}\n"
    slow = "\n\n@pytest.mark.slow\ndef test_training():\n    assert {n}\n"
    assert _code_only(source + bench.format(n=1)) == _code_only(source + bench.format(n=2)) == _code_only(source)
    assert _code_only(source + gpu.format(n=1)) == _code_only(source + gpu.format(n=2))
    assert _code_only(source + slow.format(n=1)) != _code_only(source + slow.format(n=2))  # slow checks may run
