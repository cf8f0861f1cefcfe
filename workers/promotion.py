"""Reward-gated promotion and automatic rollback, the decisions: a sequential test over plain numbers.

Traces name the library version they ran with, so each version has a reward record. A
``candidate`` is promoted when it is shown, on live traffic, to do at least as well as
``production`` within a margin (non-inferiority); a ``production`` version is rolled back when it
is shown to do worse than its predecessor by more than a margin.

The test may be evaluated at any moment (every minute by beat), but it does not "peek itself" into
false decisions: it only decides at fixed looks, after N, 2N, 3N, ... rewarded traces of the
version under test, each look using exactly the data that existed at that look (rewards ordered by
arrival), and look k spends alpha/2^k of the error budget, so the chance of a false promotion over
all looks together stays below alpha. Evaluating the same data again gives the same answer.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

from grpod.schema.errors import SettingError

Policy = Literal["auto", "gated"]
POLICIES: tuple[Policy, ...] = ("auto", "gated")
MAX_LOOKS = 10
# The smallest look: below about 10 rewarded traces the variance estimates are too rough for the
# error bound to hold (measured: a false-promotion rate of 0.17 at 2 and 0.08 at 5, for alpha 0.05).
MIN_LOOK = 10


@dataclass(frozen=True)
class PublishSettings:
    """How a domain's new versions reach production (stored with its other settings)."""

    publish_policy: Policy = "auto"
    promotion_min_traces: int = 30  # N: rewarded traces of a candidate per look
    promotion_margin: float = 0.05  # a candidate may be this much worse than production and still pass
    auto_rollback: bool = True
    rollback_min_traces: int = 30  # N: rewarded traces of a production version per look
    rollback_margin: float = 0.1  # production rolls back when worse than its predecessor by more than this
    test_alpha: float = 0.05  # the chance of a wrong promotion (or rollback) over all looks
    # The guard: one version may remove at most this many of its parent's experiences ...
    max_deletes_per_version: int = 3
    # ... and at most this share of them (rounded down, but always at least one).
    max_removed_fraction: float = 0.25

    FIELDS = (
        "publish_policy",
        "promotion_min_traces",
        "promotion_margin",
        "auto_rollback",
        "rollback_min_traces",
        "rollback_margin",
        "test_alpha",
        "max_deletes_per_version",
        "max_removed_fraction",
    )

    @classmethod
    def from_json(cls, values: Mapping[str, object]) -> PublishSettings:
        defaults = cls()
        return validated_publish_settings(**{name: values.get(name, getattr(defaults, name)) for name in cls.FIELDS})

    def to_json(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.FIELDS}


def _whole(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SettingError(f"{name} must be a whole number from {low} to {high}, not {value!r}")
    return value


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise SettingError(f"{name} must be a finite number of at least 0, not {value!r}")
    return float(value)


def validated_publish_settings(**values: object) -> PublishSettings:
    policy = next((known for known in POLICIES if known == values["publish_policy"]), None)
    if policy is None:
        raise SettingError(f"publish_policy must be auto or gated, not {values['publish_policy']!r}")
    alpha = values["test_alpha"]
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < 0.5:
        raise SettingError(f"test_alpha must be a number between 0 and 0.5, not {alpha!r}")
    rollback = values["auto_rollback"]
    if not isinstance(rollback, bool):
        raise SettingError(f"auto_rollback must be true or false, not {rollback!r}")
    fraction = values["max_removed_fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 <= fraction <= 1:
        raise SettingError(f"max_removed_fraction must be a share from 0 to 1, not {fraction!r}")
    return PublishSettings(
        publish_policy=policy,
        promotion_min_traces=_whole("promotion_min_traces", values["promotion_min_traces"], MIN_LOOK, 100_000),
        promotion_margin=_number("promotion_margin", values["promotion_margin"]),
        auto_rollback=rollback,
        rollback_min_traces=_whole("rollback_min_traces", values["rollback_min_traces"], MIN_LOOK, 100_000),
        rollback_margin=_number("rollback_margin", values["rollback_margin"]),
        test_alpha=float(alpha),
        max_deletes_per_version=_whole("max_deletes_per_version", values["max_deletes_per_version"], 0, 100_000),
        max_removed_fraction=float(fraction),
    )


@dataclass(frozen=True)
class Reward:
    """One rewarded trace of a version: its (combined) reward and when the reward arrived."""

    value: float
    at: float  # seconds since the epoch


@dataclass(frozen=True)
class Stats:
    traces: int
    mean: float | None
    stddev: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        if not values:
            return cls(0, None, None)
        return cls(len(values), statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)

    def interval(self) -> tuple[float, float] | None:
        """The 95% confidence interval of the mean (Student's t); None under two traces."""
        if self.mean is None or self.stddev is None or self.traces < 2:
            return None
        df = self.traces - 1
        quantile = T_975_SMALL_DF[df] if df in T_975_SMALL_DF else t_quantile(0.975, df)
        half = quantile * self.stddev / math.sqrt(self.traces)
        return self.mean - half, self.mean + half


# Exact 97.5% quantiles of Student's t where t_quantile's expansion is too coarse (df < 5).
T_975_SMALL_DF = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764}


Decision = Literal["wait", "promote", "discard", "rollback", "keep"]


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    reason: str
    look: int = 0  # the look that decided (0: none yet)
    alpha: float = 0.0  # the error spent at that look
    difference: float | None = None  # mean of the version under test minus the reference's
    lower: float | None = None  # the bounds of that difference at the look
    upper: float | None = None
    tested: Stats = Stats(0, None, None)
    reference: Stats = Stats(0, None, None)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def look_alpha(look: int, alpha: float) -> float:
    """The error spent at look ``look`` (1, 2, ...): alpha/2, alpha/4, ...; they sum to less than alpha."""
    return alpha / 2.0**look


def t_quantile(p: float, df: float) -> float:
    """Student's t quantile, from the normal one by its Cornish-Fisher expansion (Abramowitz and
    Stegun 26.7.5; within about 1% for df >= 5); the normal quantile for infinite df."""
    z = statistics.NormalDist().inv_cdf(p)
    if math.isinf(df):
        return z
    terms = (
        (z**3 + z) / 4,
        (5 * z**5 + 16 * z**3 + 3 * z) / 96,
        (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
        (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160,
    )
    return z + sum(term / df ** (power + 1) for power, term in enumerate(terms))


def _bounds(tested: Sequence[float], reference: Sequence[float], alpha: float) -> tuple[float, float, float]:
    """The difference of means and its one-sided (1 - alpha) lower and upper bounds (Welch's t)."""
    difference = statistics.fmean(tested) - statistics.fmean(reference)
    a = statistics.variance(tested) / len(tested)
    b = statistics.variance(reference) / len(reference)
    variance = a + b
    # Welch-Satterthwaite degrees of freedom (infinite when both samples are constant).
    denominator = a**2 / (len(tested) - 1) + b**2 / (len(reference) - 1)
    df = variance**2 / denominator if denominator > 0 else math.inf
    half = t_quantile(1 - alpha, df) * math.sqrt(variance)
    return difference, difference - half, difference + half


def _looks(
    tested: Sequence[Reward], reference: Sequence[Reward], per_look: int
) -> list[tuple[int, list[float], list[float]]]:
    """Each completed look: (k, the tested rewards that had arrived when the (k*N)-th did, and the
    reference rewards that had arrived by then). Rewards that arrived at the same moment as the
    look's last one all count, so the sample does not depend on the order of the list."""
    ordered = sorted(tested, key=lambda r: (r.at, r.value))
    looks = []
    for look in range(1, min(MAX_LOOKS, len(ordered) // per_look) + 1):
        cutoff = ordered[look * per_look - 1].at
        first = [r.value for r in ordered if r.at <= cutoff]
        known = [r.value for r in reference if r.at <= cutoff]
        looks.append((look, first, known))
    return looks


def _at_look(
    decision: Decision, reason: str, look: int, alpha: float, tested: Sequence[float], reference: Sequence[float]
) -> Verdict:
    difference, lower, upper = _bounds(tested, reference, alpha)
    return Verdict(decision, reason, look, alpha, difference, lower, upper, Stats.of(tested), Stats.of(reference))


def judge_candidate(candidate: Sequence[Reward], production: Sequence[Reward], settings: PublishSettings) -> Verdict:
    """Promote a candidate shown not worse than production by more than the margin; discard one shown
    worse, or still undecided after the last look."""
    margin, n = settings.promotion_margin, settings.promotion_min_traces
    last: Verdict | None = None
    for look, tested, known in _looks(candidate, production, n):
        if len(known) < 2:
            last = Verdict("wait", f"production has {len(known)} rewarded traces to compare with", look)
            continue
        alpha = look_alpha(look, settings.test_alpha)
        _, lower, upper = _bounds(tested, known, alpha)
        if lower > -margin:
            reason = f"not worse than production by more than {margin:g} (look {look})"
            return _at_look("promote", reason, look, alpha, tested, known)
        if upper < -margin:
            reason = f"worse than production by more than {margin:g} (look {look})"
            return _at_look("discard", reason, look, alpha, tested, known)
        if look == MAX_LOOKS:
            reason = f"not shown to be as good as production in {MAX_LOOKS} looks"
            return _at_look("discard", reason, look, alpha, tested, known)
        last = _at_look("wait", f"undecided at look {look}", look, alpha, tested, known)
    if last is not None:
        return last
    return Verdict(
        "wait",
        f"{len(candidate)} of {n} rewarded traces for the first look",
        tested=Stats.of([r.value for r in candidate]),
        reference=Stats.of([r.value for r in production]),
    )


def judge_regression(current: Sequence[Reward], previous: Sequence[Reward], settings: PublishSettings) -> Verdict:
    """Roll production back when it is shown worse than its predecessor by more than the margin;
    keep it once the last look passes without that."""
    margin, n = settings.rollback_margin, settings.rollback_min_traces
    if len(previous) < 2:
        return Verdict("keep", f"the predecessor has {len(previous)} rewarded traces: nothing to compare with")
    reference = [r.value for r in previous]  # the predecessor's record is complete: all of it counts
    last: Verdict | None = None
    for look, tested, _ in _looks(current, previous, n):
        alpha = look_alpha(look, settings.test_alpha)
        _, _, upper = _bounds(tested, reference, alpha)
        if upper < -margin:
            reason = f"worse than its predecessor by more than {margin:g} (look {look})"
            return _at_look("rollback", reason, look, alpha, tested, reference)
        if look == MAX_LOOKS:
            return _at_look("keep", f"no regression shown in {MAX_LOOKS} looks", look, alpha, tested, reference)
        last = _at_look("wait", f"no regression shown at look {look}", look, alpha, tested, reference)
    if last is not None:
        return last
    return Verdict(
        "wait",
        f"{len(current)} of {n} rewarded traces for the first look",
        tested=Stats.of([r.value for r in current]),
        reference=Stats.of(reference),
    )
