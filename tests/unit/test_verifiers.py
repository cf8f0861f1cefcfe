"""Answer verifiers: the tricky answers for `math`, the normalised match of `exact`, and plug-ins."""

from __future__ import annotations

import threading
import time

import pytest

from grpod.schema.errors import ConfigError
from grpod.workers.verifiers import (
    MAX_BITS,
    Verdict,
    boxed_answers,
    exact,
    final_boxed,
    load_verifier,
    math,
    math_form,
)

# Boxed answers -------------------------------------------------------------------------------------


def test_final_boxed_reads_nested_braces() -> None:
    assert final_boxed(r"so the answer is \boxed{\frac{1}{2}}.") == r"\frac{1}{2}"
    assert final_boxed(r"\boxed{\sqrt{\frac{a^{2}}{b}}} done") == r"\sqrt{\frac{a^{2}}{b}}"


def test_final_boxed_is_the_last_of_several() -> None:
    assert final_boxed(r"first \boxed{1}, then on reflection \boxed{2}") == "2"
    assert boxed_answers(r"first \boxed{1}, then on reflection \boxed{2}") == ["1", "2"]


def test_final_boxed_reads_fbox_and_escaped_braces() -> None:
    assert final_boxed(r"\fbox{7}") == "7"
    assert final_boxed(r"\boxed {\{1, 2\}}") == r"\{1, 2\}"


def test_final_boxed_without_a_box_or_with_an_unclosed_last_one() -> None:
    assert final_boxed("the answer is 33") is None
    assert final_boxed(r"\boxed{1} and then \boxed{\frac{2}{3}") is None  # cut off: no answer
    assert boxed_answers(r"\boxed{1} and then \boxed{2") == ["1", None]


def test_a_box_inside_a_box_is_part_of_the_outer_one() -> None:
    assert boxed_answers(r"\boxed{\boxed{5}}") == [r"\boxed{5}"]
    assert math(r"\boxed{\boxed{5}}", "5").correct


# math: what is equal ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "truth"),
    [
        (r"\boxed{\frac{1}{2}}", "0.5"),
        (r"\boxed{\frac{1}{2}}", "1/2"),
        (r"\boxed{1/2}", r"\frac{1}{2}"),
        (r"\boxed{0.5}", r"\frac12"),
        (r"\boxed{\dfrac{3}{4}}", "3/4"),
        (r"\boxed{\tfrac{3}{4}}", "0.75"),
        (r"\boxed{-\frac{1}{2}}", "-0.5"),
        (r"\boxed{2\sqrt{2}}", r"\sqrt{8}"),
    ],
)
def test_math_fractions_and_forms(answer: str, truth: str) -> None:
    verdict = math(answer, truth)
    assert verdict.correct, verdict
    assert verdict.reason.startswith(r"\boxed{} gives ")
    assert "equal to the ground truth" in verdict.reason


@pytest.mark.parametrize("truth", ["$2$", r"\(2\)", r"\[2\]", "$$2$$", " 2 "])
def test_math_ground_truth_in_latex_delimiters(truth: str) -> None:
    # \[2\] inside $...$ defeats math-verify, so delimiters come off first
    assert math(r"\boxed{2}", truth).correct
    assert not math(r"\boxed{3}", truth).correct


def test_math_answer_in_latex_delimiters_inside_the_box() -> None:
    assert math(r"\boxed{$\frac{1}{2}$}", "0.5").correct


@pytest.mark.parametrize(
    ("answer", "truth"),
    [(r"\boxed{033}", "33"), (r"\boxed{33}", "033"), (r"\boxed{033}", "$033$"), (r"\boxed{007}", "7")],
)
def test_math_leading_zeros(answer: str, truth: str) -> None:
    # AIME answers are integers 0-999, often written with leading zeros
    assert math(answer, truth).correct


@pytest.mark.parametrize(
    "answer",
    [
        r"\boxed{33\text{ cm}}",
        r"\boxed{33 \text{ cm}}",
        r"\boxed{33 \text{ cm}^2}",
        r"\boxed{33\,\text{cm}}",
        r"\boxed{33 \mathrm{m}}",
        r"\boxed{\text{33 cm}}",  # math-verify alone reads this as one symbol, 33cm
        r"\boxed{\text{33}}",
        r"\boxed{33 \text{ square units}}",
    ],
)
def test_math_units_come_off(answer: str) -> None:
    verdict = math(answer, "33")
    assert verdict.correct, verdict


@pytest.mark.parametrize("answer", [r"\boxed{45^\circ}", r"\boxed{45^{\circ}}", r"\boxed{45°}", r"\boxed{45 degrees}"])
def test_math_degrees(answer: str) -> None:
    assert math(answer, "45").correct
    assert not math(answer, "46").correct


@pytest.mark.parametrize(
    "answer",
    [
        r"\boxed{1,000}",
        r"\boxed{1{,}000}",
        r"\boxed{1\,000}",  # math-verify alone reads these three as 1*0 or 1
        r"\boxed{1\;000}",
        r"\boxed{1 000}",
    ],
)
def test_math_thousands_separators(answer: str) -> None:
    verdict = math(answer, "1000")
    assert verdict.correct, verdict


def test_math_thousands_separators_in_a_longer_number() -> None:
    assert math(r"\boxed{12\,345\,678}", "12345678").correct
    assert math(r"\boxed{1,000,000}", "1000000").correct
    assert not math(r"\boxed{1\,001}", "1000").correct


@pytest.mark.parametrize(("answer", "truth"), [(r"\boxed{x = 5}", "5"), (r"\boxed{x=5}", "5"), (r"\boxed{5}", "x = 5")])
def test_math_a_variable_named(answer: str, truth: str) -> None:
    assert math(answer, truth).correct


def test_math_other_equal_forms() -> None:
    assert math(r"\boxed{50\%}", "50").correct
    assert math(r"\boxed{\$5}", "5").correct
    assert math(r"\boxed{12}", "12.0").correct
    assert math(r"\boxed{(1, 2)}", "(1,2)").correct
    assert math(r"\boxed{\{1, 2\}}", r"\{2, 1\}").correct


# math: what is not --------------------------------------------------------------------------------


def test_math_a_wrong_answer() -> None:
    verdict = math(r"so \boxed{34}", "33")
    assert verdict == Verdict(False, "34", r"\boxed{} gives 34, not equal to the ground truth 33")


def test_math_wrong_answers_stay_wrong() -> None:
    assert not math(r"\boxed{-5}", "5").correct
    assert not math(r"\boxed{0.333}", r"\frac{1}{3}").correct
    assert not math(r"\boxed{(2, 1)}", "(1, 2)").correct
    assert not math(r"\boxed{x = 5}", "x = 6").correct
    assert not math(r"\boxed{330}", "33").correct


def test_math_several_boxed_answers_the_last_counts() -> None:
    text = r"maybe \boxed{1} ... no, in fact \boxed{2}"
    right = math(text, "2")
    assert right.correct
    assert right.extracted == "2"
    assert right.reason == r"the last of 2 \boxed{} answers gives 2, equal to the ground truth 2"
    wrong = math(text, "1")
    assert not wrong.correct
    assert wrong.reason.startswith(r"the last of 2 \boxed{} answers gives 2, not equal")


def test_math_no_boxed_answer() -> None:
    assert math("The answer is 33.", "33") == Verdict(False, None, "no \\boxed{} answer in the text")


def test_math_an_unclosed_last_box() -> None:
    verdict = math(r"\boxed{33} or maybe \boxed{3", "33")
    assert not verdict.correct
    assert verdict.extracted is None
    assert "never closed" in verdict.reason


def test_math_reason_names_both_sides() -> None:
    verdict = math(r"\boxed{1/2}", "0.5")
    assert verdict == Verdict(True, "1/2", r"\boxed{} gives 1/2, equal to the ground truth 0.5")


def test_math_ground_truth_as_a_worked_solution() -> None:
    solution = r"Halve it: $1 \div 2 = \boxed{\frac{1}{2}}$."
    verdict = math(r"\boxed{0.5}", solution)
    assert verdict.correct
    assert verdict.reason.endswith(r"the ground truth \frac{1}{2}")


def test_math_an_empty_box_is_compared_as_text() -> None:
    verdict = math(r"\boxed{}", "33")
    assert not verdict.correct
    assert "not mathematics to math-verify" in verdict.reason


def test_math_numbers_too_large_to_compute_are_compared_as_text() -> None:
    started = time.monotonic()
    wrong = math(r"\boxed{9^{9^{9^{9}}}}", "33")
    same = math(r"\boxed{9^{9^{9^{9}}}}", "9^{9^{9^{9}}}")
    assert time.monotonic() - started < 5  # computed, this would take hours
    assert not wrong.correct
    assert "too large a number to compute" in wrong.reason
    assert same.correct


def test_math_large_numbers_that_can_be_computed_still_are() -> None:
    assert math(r"\boxed{2^{10}}", "1024").correct
    assert math(r"\boxed{2^{1000}}", "2^{1000}").correct
    assert math(r"\boxed{10!}", "3628800").correct
    assert MAX_BITS >= 100_000


def test_math_a_slow_comparison_gives_up_at_its_deadline() -> None:
    slow = r"\boxed{\frac{(x+y+z)^{30}}{(x+y)^{20}}}"  # symbolic simplification: seconds
    started = time.monotonic()
    verdict = math(slow, "(x+y+z)^{10}", seconds=0.3)
    assert time.monotonic() - started < 3
    assert verdict == Verdict(
        False, slow.removeprefix(r"\boxed{").removesuffix("}"), verdict.reason
    )  # the extracted answer is kept
    assert "no decision within 0.3 s" in verdict.reason


def test_math_runs_in_worker_threads_with_its_deadline() -> None:
    # math-verify's own (signal) timeouts would raise ValueError outside the main thread
    verdicts: list[Verdict] = []
    threads = [
        threading.Thread(target=lambda: verdicts.append(math(r"\boxed{\frac{1}{2}}", "0.5"))),
        threading.Thread(
            target=lambda: verdicts.append(math(r"\boxed{\frac{(x+y+z)^{30}}{(x+y)^{20}}}", "1", seconds=0.3))
        ),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(v.correct for v in verdicts) == [False, True]
    assert any("no decision within 0.3 s" in v.reason for v in verdicts)


def test_math_deadlines_firing_as_comparisons_end_leave_nothing_behind() -> None:
    # deadlines this short fire about when the comparison ends; one that fired just after would
    # raise in whatever ran next
    outcomes = set()
    for n in range(200):
        verdict = math(rf"\boxed{{{n}}}", str(n), seconds=0.002)
        assert verdict.correct or "no decision within 0.002 s" in verdict.reason
        outcomes.add(verdict.correct)
    time.sleep(0.05)
    assert True in outcomes


def test_math_form_strips_delimiters_and_groups() -> None:
    assert math_form(r"\[2\]") == "$2$"
    assert math_form("$$033$$") == "$033$"
    assert math_form(r"1\,000") == "$1000$"
    assert math_form("$1$ and $2$") == "$$1$ and $2$$"  # two formulas: left alone
    assert math_form(r"\text{33 cm}") == r"$33 \text{ cm}$"


# exact ---------------------------------------------------------------------------------------------


def test_exact_boxed_answer_normalised() -> None:
    verdict = exact(r"The capital is \boxed{ Paris. }", "paris")
    assert verdict == Verdict(True, " Paris. ", r"\boxed{} gives 'paris', the same as the ground truth 'paris'")


def test_exact_last_line_without_a_box() -> None:
    verdict = exact("Let me think.\nThe answer:\n  $New   York$.  \n\n", "new york")
    assert verdict.correct
    assert verdict.extracted == "$New   York$."
    assert verdict.reason == "the last line gives 'new york', the same as the ground truth 'new york'"


def test_exact_differs() -> None:
    verdict = exact(r"\boxed{1} then \boxed{Lyon}", "Paris")
    assert verdict == Verdict(
        False, "Lyon", r"the last of 2 \boxed{} answers gives 'lyon', not the ground truth 'paris'"
    )


def test_exact_is_not_math() -> None:
    assert not exact(r"\boxed{0.5}", r"\frac{1}{2}").correct
    assert not exact(r"\boxed{033}", "33").correct


def test_exact_empty_answer() -> None:
    assert exact("  \n ", "x") == Verdict(False, None, "the answer is empty")


# Plug-ins ------------------------------------------------------------------------------------------


def test_load_built_in_verifiers() -> None:
    assert load_verifier("math") is math
    assert load_verifier("exact") is exact


def test_plugin_returning_a_bool() -> None:
    verifier = load_verifier("tests.verifier_plugin:same_number")
    assert verifier("the answer is 33", "33") == Verdict(True, None, "tests.verifier_plugin:same_number says correct")
    assert verifier("the answer is 34", "33") == Verdict(
        False, None, "tests.verifier_plugin:same_number says incorrect"
    )


def test_plugin_returning_a_mapping() -> None:
    verifier = load_verifier("tests.verifier_plugin:graded")
    assert verifier("so 33", "33") == Verdict(True, "33", "read 33 from the answer")  # on one line
    assert verifier("so 34", "33") == Verdict(False, "34", "read 34 from the answer")


def test_plugin_returning_a_mapping_with_only_correct() -> None:
    verifier = load_verifier("tests.verifier_plugin:only_correct")
    assert verifier("a", "a") == Verdict(True, None, "tests.verifier_plugin:only_correct says correct")


def test_plugin_returning_a_verdict() -> None:
    verifier = load_verifier("tests.verifier_plugin:verdict")
    assert verifier("x", "x") == Verdict(True, "x", "compared whole")


def test_plugin_returning_something_else_is_incorrect() -> None:
    verdict = load_verifier("tests.verifier_plugin:confused")("a", "a")
    assert not verdict.correct
    assert verdict.reason.startswith("tests.verifier_plugin:confused returned 'yes', not a bool")


def test_plugin_that_raises_marks_that_answer_incorrect() -> None:
    verdict = load_verifier("tests.verifier_plugin:crashes")("an answer", "33")
    assert verdict == Verdict(False, None, "the verifier raised ValueError: cannot read 'an answer' on two lines")
    assert "\n" not in verdict.reason


@pytest.mark.parametrize(
    ("spec", "sentence"),
    [
        ("nonsense", "--verifier nonsense: not math, exact or module:function"),
        ("tests.verifier_plugin:", "--verifier tests.verifier_plugin:: not math, exact or module:function"),
        (":same_number", "--verifier :same_number: not math, exact or module:function"),
        ("no_such_package.checks:fn", "--verifier no_such_package.checks:fn: no module named no_such_package"),
        ("tests.verifier_plugin:nope", "--verifier tests.verifier_plugin:nope: module tests.verifier_plugin has no"),
        ("tests.verifier_plugin:NOT_A_FUNCTION", "tests.verifier_plugin.NOT_A_FUNCTION is a int, not a function"),
        ("tests.verifier_plugin_broken:fn", "importing tests.verifier_plugin_broken raised RuntimeError: this module"),
    ],
)
def test_bad_specs_are_one_sentence(spec: str, sentence: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_verifier(spec)
    message = str(raised.value)
    assert sentence in message
    assert "\n" not in message


def test_a_missing_function_is_named() -> None:
    with pytest.raises(
        ConfigError,
        match=r"^--verifier tests\.verifier_plugin:nope: module tests\.verifier_plugin has no function nope$",
    ):
        load_verifier("tests.verifier_plugin:nope")


def test_verdict_to_json() -> None:
    assert Verdict(True, "1/2", "why").to_json() == {"correct": True, "extracted": "1/2", "reason": "why"}
    assert Verdict(False, None, "none").to_json() == {"correct": False, "extracted": None, "reason": "none"}
