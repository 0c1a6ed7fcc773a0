"""Numerical assertions and gradient checks with failure messages a learner can act on.

Messages follow one shape: what was called and with what, what came back, what was expected, where the
largest error is and how large it is against the tolerance, why the property matters, and, when a
catalogued mistake reproduces the wrong answer, the likely cause.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from checks.harness.catalogue import mistakes_within


def describe(value: Any) -> str:
    """A short description of an argument or result: shape and dtype for arrays, repr otherwise."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        if getattr(getattr(value, "device", None), "type", None) == "meta":  # a meta tensor has no values
            return f"{type(value).__name__} of shape {tuple(value.shape)} and dtype {value.dtype} on the meta device"
        array = _to_numpy(value)
        text = f"{type(value).__name__} of shape {tuple(value.shape)} and dtype {value.dtype}"
        if array.size <= 12:
            text += f": {np.array2string(array, precision=6, separator=', ')}"
        return text
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def format_call(name: str, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None) -> str:
    parts = [describe(a) for a in args] + [f"{k}={describe(v)}" for k, v in (kwargs or {}).items()]
    return f"{name}({', '.join(parts)})"


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().cpu()
        value = (value.float() if str(value.dtype) == "torch.bfloat16" else value).numpy()  # NumPy has no bfloat16
    return np.asarray(value)


def error_report(actual: Any, expected: Any, rtol: float, atol: float) -> str | None:
    """None when ``actual`` matches ``expected`` within tolerance, else where and how much it differs."""
    a, e = _to_numpy(actual), _to_numpy(expected)
    if a.shape != e.shape:
        return f"shape {a.shape} where {e.shape} was expected"
    if a.dtype.kind not in "biuf" or e.dtype.kind not in "biuf":  # strings, objects: exact equality
        unequal = np.argwhere(a != e) if a.ndim else ([()] if a != e else [])
        if not len(unequal):
            return None
        index = tuple(int(i) for i in unequal[0])
        got, want = a[index].tolist(), e[index].tolist()
        where = f" at index {index}" if index else ""
        return f"{len(unequal)} of {max(a.size, 1)} values differ; the first{where}: got {got!r}, expected {want!r}"
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    close = np.isclose(a64, e64, rtol=rtol, atol=atol, equal_nan=True)  # nan only matches nan
    if close.all():
        return None
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(a64 - e64)
        both_nan = np.isnan(a64) & np.isnan(e64)
        diff = np.where(both_nan, 0.0, np.where(np.isnan(diff), np.inf, diff))  # nan vs number: infinitely wrong
        index = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.ndim else ()
        scale = abs(float(e64[index])) if np.isfinite(e64[index]) else 1.0
    # relative to an expected 0 an error is meaningless (2e+299 says nothing): give the absolute one only
    rel = f", rel. error {diff[index] / scale:.3g}" if scale > 0 else ""
    where = f" at index {tuple(int(i) for i in index)}" if index else ""
    return (
        f"{int((~close).sum())} of {close.size} values differ; max abs error {diff[index]:.3g}{where} "
        f"(got {a64[index].item()!r}, expected {e64[index].item()!r}{rel}); "
        f"tolerance atol={atol:g}, rtol={rtol:g}"
    )


def likely_cause(
    kata: str,
    symbol: str,
    run: Callable[[Any], Any],
    actual: Any = None,
    *,
    rtol: float = 1e-6,
    atol: float = 1e-9,
    matches: Callable[[Any], bool] | None = None,
) -> str | None:
    """The ``because`` of the catalogued mistake of ``symbol`` that reproduces what the learner's code did.

    Mistakes in the parts ``symbol`` is built from count too: for a GPT-2 model, a mistaken MLP is tried
    as the reference GPT-2 built with that MLP.

    ``run(candidate)`` repeats, with a catalogued mistake in place of the learner's function or class, the
    very call (or construction, training, sampling ...) whose result was wrong; for a function that is
    ``lambda f: f(*args, **kwargs)``, for a module ``lambda cls: cls(...)(x)``. ``run`` must work on fresh
    copies of its inputs. The mistake's result matches when it equals ``actual`` within the tolerance,
    or, for statistical and behavioural paths, when ``matches(result)`` is true.

    Inside a hypothesis test it only looks on the final run, the one whose failure is reported: while
    hypothesis shrinks a failing example, the message of every intermediate failure is thrown away.
    """
    if _shrinking():
        return None
    for entry in mistakes_within(kata, symbol):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # wrong code warns (overflow, ...) by design
                candidate = run(entry.implementation(symbol))
                if matches is not None:
                    same = matches(candidate)
                else:
                    same = error_report(actual, candidate, rtol, atol) is None
        except Exception:  # noqa: BLE001 - a mistake that crashes on this input simply does not match
            continue
        if same:
            return entry.because
    return None


def cause_line(cause: str | Callable[[], str | None] | None) -> str:
    """The "Likely cause: ..." line that ends a failure message, or "" when no catalogued mistake matches.

    ``cause`` is a string, None, or a function that finds one (for example a ``lambda`` around
    ``likely_cause``), so that the search for a cause only runs when the check has already failed.
    """
    cause = cause() if callable(cause) else cause
    return f"\nLikely cause: {cause}" if cause else ""


def value_error_message(call: str, run: Callable[[], Any], case: str) -> str:
    """The message of the ValueError that ``run()`` must raise for ``case`` (a bad argument, in words).

    Any other outcome fails the check with what happened instead: another exception (raised deep in the work,
    not by the learner's own check of the arguments), or a result. An untouched stub's NotImplementedError
    passes through, so that it is reported as not implemented yet.
    """
    because = f"\nBecause the docstring makes {case} a ValueError that names the problem."
    try:
        result = run()
    except ValueError as error:
        return str(error)
    except NotImplementedError:
        raise
    except Exception as error:  # noqa: BLE001 - any other exception is the learner's, reported as such
        raise AssertionError(f"Called {call} ({case}). It raised {type(error).__name__}({str(error)!r}); expected a "
                             f"ValueError from your own check, before the work starts.{because}") from None
    raise AssertionError(f"Called {call} ({case}). It returned {describe(result)}; expected a ValueError.{because}")


def _shrinking() -> bool:
    from hypothesis.control import current_build_context, currently_in_test_context

    return currently_in_test_context() and not current_build_context().is_final


def assert_close(
    actual: Any,
    expected: Any,
    *,
    call: str,
    because: str = "",
    rtol: float = 1e-6,
    atol: float = 1e-9,
    cause: str | None = None,
) -> None:
    """Fail with an exercism-style message when ``actual`` is not ``expected`` within tolerance."""
    problem = error_report(actual, expected, rtol, atol)
    if problem is None:
        return
    lines = [f"Called {call}.", f"Returned {describe(actual)},", f"expected {describe(expected)}.", problem + "."]
    if because:
        lines.append(f"Because {because}")
    if cause:
        lines.append(f"Likely cause: {cause}")
    raise AssertionError("\n".join(lines))


def compare_with_reference(
    impl, reference, symbol: str, *args: Any, because: str = "", rtol: float = 1e-6, atol: float = 1e-9, **kwargs: Any
) -> Any:
    """Call ``symbol`` of the code under test and of the reference on copies of the same input; compare.

    Returns the learner's result. On a mismatch the message names a catalogued mistake that gives the
    same wrong answer, when there is one.
    """
    expected = getattr(reference, symbol)(*copy.deepcopy(args), **copy.deepcopy(kwargs))
    actual = getattr(impl, symbol)(*copy.deepcopy(args), **copy.deepcopy(kwargs))
    if error_report(actual, expected, rtol, atol) is not None:
        kata = reference.__name__.rsplit(".", 1)[-1]
        cause = likely_cause(
            kata, symbol, lambda f: f(*copy.deepcopy(args), **copy.deepcopy(kwargs)), actual, rtol=rtol, atol=atol
        )
        assert_close(
            actual, expected, call=format_call(symbol, args, kwargs), because=because, rtol=rtol, atol=atol, cause=cause
        )
    return actual


def central_difference(f: Callable[[np.ndarray], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """The checks' own numerical gradient of a scalar function, in float64 (never the learner's)."""
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        original = x[index]
        x[index] = original + eps
        plus = f(x)
        x[index] = original - eps
        minus = f(x)
        x[index] = original
        grad[index] = (plus - minus) / (2 * eps)
    return grad


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max(|a| + |b|, tiny): the usual gradient-check measure (scale free)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), 1e-12))) if a.size else 0.0


def assert_gradient(
    analytic: np.ndarray, numeric: np.ndarray, *, argument: str, call: str, max_rel_error: float = 1e-6
) -> None:
    """Compare an analytic gradient with central differences; the message names argument and index."""
    analytic, numeric = np.asarray(analytic, np.float64), np.asarray(numeric, np.float64)
    if analytic.shape != numeric.shape:
        raise AssertionError(
            f"Called {call}. The gradient for {argument} has shape {analytic.shape}; "
            f"it must have the shape of {argument}, {numeric.shape}."
        )
    # Relative to each entry, but never to less than a millionth of the largest entry: central
    # differences cannot resolve entries that small, and their absolute error is what matters there.
    floor = max(1e-6 * float(np.max(np.abs(numeric), initial=0.0)), 1e-12)
    errors = np.abs(analytic - numeric) / np.maximum(np.abs(analytic) + np.abs(numeric), floor)
    # inf - inf and x / inf give nan, which compares False with any tolerance: count it as wrong.
    errors = np.where(np.isnan(errors), np.inf, errors)
    if errors.size and errors.max() > max_rel_error:
        index = tuple(int(i) for i in np.unravel_index(int(np.argmax(errors)), errors.shape))
        raise AssertionError(
            f"Called {call}. The derivative with respect to {argument}{list(index)} is wrong: "
            f"received {analytic[index]:.8g}, central differences give {numeric[index]:.8g} "
            f"(relative error {errors[index]:.2g} > {max_rel_error:g})."
        )
