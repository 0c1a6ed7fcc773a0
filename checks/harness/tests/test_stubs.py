"""Canonical stubs, API comparison, and restoring one exercise with `kata reset`."""

from __future__ import annotations

import textwrap

from checks.harness.registry import Exercise
from checks.harness.stubs import api_differences, reset_source, stub_body, stub_problems

EX = Exercise(
    kata="w99_demo", name="area", title="Area", difficulty="easy", symbols=("area", "Shape"), hints=("a", "b")
)
TODO, RAISE = stub_body(EX)


def _stub(symbol: str, method: str | None = None) -> str:
    return stub_body(EX, symbol, method)[1]

STUB = textwrap.dedent(
    f'''
    import math


    def area(r: float) -> float:
        """Area of a circle."""
        {TODO}
        {RAISE}


    class Shape:
        """A shape."""

        def __init__(self, n: int):
            {TODO}
            {_stub("Shape", "__init__")}

        def sides(self) -> int:
            """How many sides."""
            {TODO}
            {_stub("Shape", "sides")}


    def helper():
        return 1
    '''
)

SOLVED = STUB.replace(f"{TODO}\n    {RAISE}", "return math.pi * r * r", 1).replace(
    f"        {TODO}\n        {_stub('Shape', '__init__')}", "        self.n = n", 1
)


def test_canonical_stubs_pass_and_solved_code_does_not():
    assert stub_problems(STUB, EX) == []
    problems = stub_problems(SOLVED, EX)
    assert any("area.area" in p for p in problems) and any("Shape.__init__" in p for p in problems)


def test_each_stub_names_itself_and_its_exercise():
    assert _stub("area") == (
        'raise NotImplementedError("w99_demo.area is not implemented yet (try `kata hint w99_demo.area`)")'
    )
    assert "w99_demo.Shape.sides is not implemented yet (part of w99_demo.area: try `kata hint w99_demo.area`)" in (
        _stub("Shape", "sides")
    )
    # a stub copied from another function still says that function's name: verify rejects it
    copied = STUB.replace(_stub("Shape", "sides"), _stub("Shape", "__init__"))
    problems = stub_problems(copied, EX)
    assert len(problems) == 1 and "Shape.sides is not a canonical stub" in problems[0]


def test_reset_restores_every_body_of_the_exercise_and_nothing_else():
    assert SOLVED != STUB
    assert reset_source(SOLVED, EX) == STUB
    assert "def helper():\n    return 1" in reset_source(SOLVED, EX)


def test_api_differences_catch_changed_signatures_and_missing_names():
    changed = STUB.replace("def area(r: float)", "def area(radius: float)").replace("def helper", "def _helper")
    problems = "\n".join(api_differences(changed, STUB))
    assert "area differs" in problems
    assert "helper is in the reference but not in the stubs" in problems
    assert api_differences(SOLVED, STUB) == []


def test_only_a_stubs_own_not_implemented_error_is_todo():
    from checks.harness.outcomes import is_not_implemented
    from checks.harness.stubs import stub_body

    message = stub_body(EX)[1].split('"')[1]
    assert is_not_implemented(NotImplementedError(message))
    assert is_not_implemented(ExceptionGroup("both", [NotImplementedError(message), NotImplementedError(message)]))
    # PyTorch's own, e.g. an operation the meta device cannot run: a failure the learner must see
    assert not is_not_implemented(NotImplementedError("Could not run 'aten::_local_scalar_dense' with 'Meta'"))
    assert not is_not_implemented(ExceptionGroup("mixed", [NotImplementedError(message), ValueError("x")]))
