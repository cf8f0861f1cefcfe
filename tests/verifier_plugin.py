"""Verifiers of a user's own, for the tests of `--verifier module:function`."""

from __future__ import annotations

from grpod.workers.verifiers import Verdict

NOT_A_FUNCTION = 42


def same_number(answer: str, ground_truth: str) -> bool:
    """A plain bool: the answer's last word is the ground truth."""
    return answer.split()[-1] == ground_truth


def graded(answer: str, ground_truth: str) -> dict[str, object]:
    """A Verdict-like mapping: correct, what it read, and why."""
    word = answer.split()[-1]
    return {"correct": word == ground_truth, "extracted": word, "reason": f"read {word}\nfrom the answer"}


def verdict(answer: str, ground_truth: str) -> Verdict:
    return Verdict(answer == ground_truth, answer, "compared whole")


def only_correct(answer: str, ground_truth: str) -> dict[str, object]:
    """A mapping with nothing but correct."""
    return {"correct": answer == ground_truth}


def confused(answer: str, ground_truth: str) -> str:
    """Neither a bool, a Verdict nor a mapping with correct."""
    return "yes"


def crashes(answer: str, ground_truth: str) -> bool:
    raise ValueError(f"cannot read {answer!r}\non two lines")
