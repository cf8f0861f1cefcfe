"""Answer verifiers: is an answer right, given the ground truth? For `grpod train`/`grpod eval` on a
data set with known answers (paper mode), and for `grpod verify`.

A verifier is a function ``(answer, ground_truth) -> Verdict``. A spec names one:

- ``math``: the answer's final ``\\boxed{}`` against the ground truth, as mathematics (math-verify):
  ``\\frac{1}{2}``, ``1/2`` and ``0.5`` are equal, so are ``033`` and ``33``, ``33 \\text{ cm}`` and
  ``33``, ``x = 5`` and ``5``. math-verify reads words as products of symbols (``ab`` equals
  ``ba``): use ``exact`` for answers that are text.
- ``exact``: the final ``\\boxed{}`` (or the answer's last line) and the ground truth as normalised
  strings: no surrounding whitespace or ``$``, no trailing period, case-folded, single spaces.
- ``module:function``: a function of your own, importable from ``sys.path`` or the working
  directory (for example ``mypackage.checks:is_correct``).

With several ``\\boxed{}`` answers in one text, the last one is the answer. A ground truth that is a
worked solution with a ``\\boxed{}`` of its own is read the same way.

The plug-in contract: the function is called as ``function(answer, ground_truth)`` with two
strings, once per answer, possibly from several threads at once. It returns

- a bool (correct or not), or
- a ``Verdict``, or
- a mapping with ``correct`` (a bool) and optionally ``extracted`` (the answer it read, or None)
  and ``reason`` (one line).

Anything else counts as incorrect, with a reason saying what came back. An exception raised by the
function marks that one answer incorrect (the reason names the exception); it does not stop a run.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
import re
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from math import inf, log2
from typing import Any, Literal

from grpod.schema.errors import ConfigError

# math-verify's own timeouts use SIGALRM, which works only in the main thread (and cancels any other
# alarm, pytest-timeout's for one), so they are off and a deadline that works in any thread bounds a
# comparison instead: symbolic ones can take minutes.
MATH_SECONDS = 5.0
# Integers of more bits than this are not computed: Python's big-integer arithmetic runs in C, where
# no deadline can interrupt it (9^{9^{9^9}} would take hours and gigabytes). 2^{1000000} takes 0.1 s.
MAX_BITS = 1_000_000


@dataclass(frozen=True)
class Verdict:
    correct: bool
    extracted: str | None  # the answer the verifier read, None when it found none
    reason: str  # one line: what was compared with what

    def to_json(self) -> dict[str, object]:
        return {"correct": self.correct, "extracted": self.extracted, "reason": self.reason}


Verifier = Callable[[str, str], Verdict]

# Boxed answers -------------------------------------------------------------------------------------

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")


def boxed_answers(text: str) -> list[str | None]:
    """The content of each ``\\boxed{}`` (or ``\\fbox{}``) in the text, in order, braces balanced
    (``\\{`` and ``\\}`` do not count); None for one that is never closed. A box inside another is
    part of the outer one's content."""
    answers: list[str | None] = []
    at = 0
    while (box := _BOX.search(text, at)) is not None:
        depth, i = 1, box.end()
        while i < len(text) and depth:
            if text[i] == "\\":
                i += 2
                continue
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth:
            answers.append(None)
            break
        answers.append(text[box.end() : i - 1])
        at = i
    return answers


def final_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{}`` (or ``\\fbox{}``) in the text: with several, the last
    one is the answer. None when there is none, or when the last one is never closed (a cut-off
    answer is no answer, even if an earlier box is complete)."""
    answers = boxed_answers(text)
    return answers[-1] if answers else None


def _source(answers: list[str | None]) -> str:
    return "\\boxed{}" if len(answers) == 1 else f"the last of {len(answers)} \\boxed{{}} answers"


def _truth(ground_truth: str) -> str:
    """The ground truth's own final ``\\boxed{}`` when it is a worked solution, else all of it."""
    return final_boxed(ground_truth) or ground_truth.strip()


_UNCLOSED = "the last \\boxed{} is never closed (a cut-off answer?)"

# Math ----------------------------------------------------------------------------------------------

_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
# A whole number in groups of three split by thin spaces or spaces (1\,000, 12 345 678): math-verify
# reads 1\,000 as 1*0. Groups split by commas (1,000) it reads as thousands itself.
_GROUPED = re.compile(r"-?\d{1,3}(?:(?:\\,|\\;|\\:|\\ |~|\{,\}|,| )\d{3})+(?:\.\d+)?")
_GROUP_SEPARATOR = re.compile(r"\\,|\\;|\\:|\\ |~|\{,\}|,| ")
# A number and its unit both inside \text{}: math-verify reads \text{33 cm} as one symbol, 33cm.
_TEXT_NUMBER = re.compile(r"\\(?:text|textbf|textrm|mathrm|mbox)\{\s*(-?[\d.,]+)\s*([^{}]*)\}")


def math_form(expression: str) -> str:
    """An answer or ground truth as math-verify reads it best: without its math delimiters (some,
    like ``\\[2\\]``, defeat it), then inside ``$...$`` (it reads ``\\dfrac{3}{4}`` only there).
    Units, degree signs, leading zeros and ``x =`` it handles itself."""
    text = expression.strip()
    stripped = True
    while stripped:
        stripped = False
        for opening, closing in _DELIMITERS:
            inner = text[len(opening) : -len(closing)]
            enclosed = len(text) > len(opening) + len(closing) and text.startswith(opening) and text.endswith(closing)
            # "$1$ and $2$" is not one formula in delimiters.
            if enclosed and closing not in inner.replace("\\$", ""):
                text, stripped = inner.strip(), True
                break
    if _GROUPED.fullmatch(text):
        text = _GROUP_SEPARATOR.sub("", text)
    if number := _TEXT_NUMBER.fullmatch(text):
        text = f"{number[1]} \\text{{ {number[2]}}}" if number[2].strip() else number[1]
    return f"${text}$"


def _log2(value: float) -> float:
    return log2(value) if value > 1 else 0.0


def _bits(number: Any) -> float:
    """An upper bound of log2|number| for a sympy number made of integers, powers, products, sums,
    factorials and binomials (inf beyond a float's range); 0 for anything else (a symbol, a function)."""
    from sympy import Add, Float, Mul, Pow, Rational, binomial, factorial

    if isinstance(number, Rational):
        return max(_log2(abs(number.p)), _log2(number.q))
    if isinstance(number, Float):
        return _log2(abs(float(number)))
    if isinstance(number, Pow):
        return _bits(number.base) * _bound(number.exp)
    if isinstance(number, Mul):
        return sum(_bits(factor) for factor in number.args)
    if isinstance(number, Add):
        return max((_bits(term) for term in number.args), default=0.0) + 1
    if isinstance(number, factorial):
        n = _bound(number.args[0])
        return n * _log2(n)
    if isinstance(number, binomial):
        return _bound(number.args[0])
    return 0.0


def _bound(number: Any) -> float:
    """An upper bound of |number| for a sympy number (inf beyond a float's range)."""
    bits = _bits(number)
    if bits < 1000 and number.is_Number:
        return abs(float(number))
    return inf if bits > 1023 else 2.0**bits


def too_large(expression: Any) -> bool:
    """Whether computing a sympy expression exactly could make an integer of more than MAX_BITS bits."""
    from sympy import Pow, binomial, factorial, preorder_traversal

    return any(
        isinstance(node, Pow | factorial | binomial) and _bits(node) > MAX_BITS
        for node in preorder_traversal(expression)
    )


Comparison = Literal["equal", "different", "unreadable", "too large"]


class _QuietTimeoutNotice(logging.Filter):
    """math-verify warns, once, that its timeouts are off; they are off on purpose (MATH_SECONDS)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _logger in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_logger).addFilter(_QuietTimeoutNotice())


@cache
def _warmed_up() -> None:
    """Import math-verify and sympy and compare once, outside any deadline: an import cut short by
    one would leave a half-made module behind for good."""
    from math_verify import parse, verify

    verify(parse("$1/2$", parsing_timeout=None), parse("$0.5$", parsing_timeout=None), timeout_seconds=None)


def _compare(answer: str, truth: str) -> Comparison:
    """What math-verify makes of the two (in math_form): equal, different, or one it cannot read or
    compute."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
    from sympy import Basic

    config = [LatexExtractionConfig(), ExprExtractionConfig()]
    gold = parse(truth, extraction_config=config, parsing_timeout=None)
    read = parse(answer, extraction_config=config, parsing_timeout=None)
    if not gold or not read:
        return "unreadable"
    if any(isinstance(parsed, Basic) and too_large(parsed) for parsed in [*gold, *read]):
        return "too large"
    return "equal" if verify(gold, read, timeout_seconds=None) else "different"


class _OutOfTime(BaseException):
    """Raised in a thread whose comparison ran past its deadline; a BaseException, so that
    math-verify's ``except Exception`` does not swallow it."""


def _interrupt(thread: int, exception: type[BaseException] | None) -> None:
    # CPython raises the exception in that thread at its next bytecode, as it would a signal
    # handler's; None withdraws one not yet raised.
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread), ctypes.py_object(exception) if exception else None
    )


def _within(seconds: float, compare: Callable[[str, str], Comparison], answer: str, truth: str) -> Comparison:
    """``compare(answer, truth)`` in this thread, or _OutOfTime raised in it after ``seconds``."""
    thread, lock = threading.get_ident(), threading.Lock()
    state = {"running": True, "fired": False}

    def expire() -> None:
        with lock:
            if state["running"]:
                state["fired"] = True
                _interrupt(thread, _OutOfTime)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        return compare(answer, truth)
    finally:
        with lock:
            state["running"] = False
        timer.cancel()
        if state["fired"]:
            _interrupt(thread, None)  # it finished as the deadline fired: leave nothing pending


def math(answer: str, ground_truth: str, *, seconds: float = MATH_SECONDS) -> Verdict:
    """The final ``\\boxed{}`` of the answer against the ground truth, as mathematics (math-verify).
    With several boxed answers the last one counts; the reason says so. What math-verify cannot read
    (prose), or a number too large to compute, is compared as text; no decision within ``seconds``
    is incorrect."""
    answers = boxed_answers(answer)
    if not answers:
        return Verdict(False, None, "no \\boxed{} answer in the text")
    extracted = answers[-1]
    if extracted is None:
        return Verdict(False, None, _UNCLOSED)
    source, truth = _source(answers), _truth(ground_truth)
    _warmed_up()
    try:
        comparison = _within(seconds, _compare, math_form(extracted), math_form(truth))
    except _OutOfTime:
        return Verdict(False, extracted, f"{source} gives {extracted}: no decision within {seconds:g} s, so incorrect")
    if comparison in ("unreadable", "too large"):
        why = "not mathematics to math-verify" if comparison == "unreadable" else "too large a number to compute"
        same = normalised(extracted) == normalised(truth)
        how = "the same text as" if same else "not the same text as"
        return Verdict(same, extracted, f"{source} gives {extracted}, {why}; {how} the ground truth {truth}")
    equal = comparison == "equal"
    how = "equal to" if equal else "not equal to"
    return Verdict(equal, extracted, f"{source} gives {extracted}, {how} the ground truth {truth}")


# Exact ---------------------------------------------------------------------------------------------


def normalised(text: str) -> str:
    """Text for an exact match: no surrounding whitespace or ``$``, no trailing period, case-folded,
    internal whitespace collapsed to single spaces."""
    trimmed = None
    while trimmed != text:  # "$x$." and "$x.$" alike
        trimmed, text = text, text.strip().strip("$").removesuffix(".")
    return " ".join(text.casefold().split())


def exact(answer: str, ground_truth: str) -> Verdict:
    """The final ``\\boxed{}`` (the answer's last non-empty line when it has none) and the ground
    truth, equal as normalised strings."""
    answers = boxed_answers(answer)
    if answers:
        extracted, source = answers[-1], _source(answers)
        if extracted is None:
            return Verdict(False, None, _UNCLOSED)
    else:
        lines = [line.strip() for line in answer.splitlines() if line.strip()]
        if not lines:
            return Verdict(False, None, "the answer is empty")
        extracted, source = lines[-1], "the last line"
    mine, theirs = normalised(extracted), normalised(_truth(ground_truth))
    if mine == theirs:
        return Verdict(True, extracted, f"{source} gives {mine!r}, the same as the ground truth {theirs!r}")
    return Verdict(False, extracted, f"{source} gives {mine!r}, not the ground truth {theirs!r}")


# Plug-ins ------------------------------------------------------------------------------------------


def load_verifier(spec: str) -> Verifier:
    """The verifier a spec names: ``math``, ``exact`` or ``module:function``. A spec that names no
    usable function is a ConfigError, one sentence."""
    if spec == "math":
        return math
    if spec == "exact":
        return exact
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise ConfigError(f"--verifier {spec}: not math, exact or module:function (like mypackage.checks:is_correct)")
    # The working directory is importable too, as for `celery -A`; last, so it shadows nothing installed.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        raise ConfigError(f"--verifier {spec}: no module named {error.name or module_name} on the path") from None
    except Exception as error:
        raise ConfigError(f"--verifier {spec}: importing {module_name} raised {_one_line(error)}") from None
    function: Any = module
    for part in attribute.split("."):
        if not hasattr(function, part):
            raise ConfigError(f"--verifier {spec}: module {module_name} has no function {attribute}")
        function = getattr(function, part)
    if not callable(function):
        kind = type(function).__name__
        raise ConfigError(f"--verifier {spec}: {module_name}.{attribute} is a {kind}, not a function")
    return _plugged(spec, function)


def _one_line(error: BaseException) -> str:
    message = " ".join(str(error).split())
    return f"{type(error).__name__}: {message[:300]}" if message else type(error).__name__


def _plugged(spec: str, function: Callable[[str, str], object]) -> Verifier:
    def verifier(answer: str, ground_truth: str) -> Verdict:
        try:
            result = function(answer, ground_truth)
        except Exception as error:
            return Verdict(False, None, f"the verifier raised {_one_line(error)}")
        return as_verdict(spec, result)

    return verifier


def as_verdict(spec: str, result: object) -> Verdict:
    """A plug-in's result (a bool, a Verdict, or a mapping with ``correct``) as a Verdict."""
    if isinstance(result, Verdict):
        return result
    if isinstance(result, bool):
        return Verdict(result, None, f"{spec} says {'correct' if result else 'incorrect'}")
    if isinstance(result, Mapping) and isinstance(result.get("correct"), bool):
        correct: bool = result["correct"]
        extracted, reason = result.get("extracted"), result.get("reason")
        return Verdict(
            correct,
            None if extracted is None else str(extracted),
            " ".join(str(reason).split()) if reason else f"{spec} says {'correct' if correct else 'incorrect'}",
        )
    shown = repr(result)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return Verdict(False, None, f"{spec} returned {shown}, not a bool, a Verdict or a mapping with correct: incorrect")
