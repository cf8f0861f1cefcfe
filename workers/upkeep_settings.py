"""A domain's upkeep settings: what keeps its library and its tables bounded as months go by.

Consolidation (near-duplicate merges, budgets) and maintenance (trace expiry, retention, merging
groups that never reach their size) read them. Stored with the domain's other settings; these
are the defaults.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from grpod.schema.errors import SettingError

DAY = 86_400


@dataclass(frozen=True)
class UpkeepSettings:
    # Two experiences within this cosine distance of each other are near-duplicates, merged into one.
    merge_distance: float = 0.15
    # Budgets: a consolidation retires the least useful experiences until the library is within both.
    max_experiences: int = 100
    max_prompt_tokens: int = 2_000
    # A trace with no reward this long after it arrived is expired: it no longer counts toward readiness.
    trace_ttl_seconds: int = 7 * DAY
    # After this, the trajectories of traces already learned from, and the LLM ledger's request
    # bodies, are dropped; what provenance needs (ids, queries, rewards, hashes) is kept.
    retention_seconds: int = 30 * DAY
    # A group still short of G after this long joins its nearest group within a relaxed threshold
    # (group_threshold times group_merge_factor).
    group_merge_wait_seconds: int = DAY
    group_merge_factor: float = 1.5

    FIELDS = (
        "merge_distance",
        "max_experiences",
        "max_prompt_tokens",
        "trace_ttl_seconds",
        "retention_seconds",
        "group_merge_wait_seconds",
        "group_merge_factor",
    )

    @classmethod
    def from_json(cls, values: Mapping[str, object]) -> UpkeepSettings:
        defaults = cls()
        return validated_upkeep_settings(**{name: values.get(name, getattr(defaults, name)) for name in cls.FIELDS})

    def to_json(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self.FIELDS}


def _whole(name: str, value: object, low: int, high: int, unit: str = "a whole number") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SettingError(f"{name} must be {unit} from {low:,} to {high:,}, not {value!r}")
    return value


def validated_upkeep_settings(**values: object) -> UpkeepSettings:
    merge = values["merge_distance"]
    if isinstance(merge, bool) or not isinstance(merge, int | float) or not 0 <= merge < 1:
        raise SettingError(f"merge_distance must be a cosine distance of at least 0 and below 1, not {merge!r}")
    factor = values["group_merge_factor"]
    if (
        isinstance(factor, bool)
        or not isinstance(factor, int | float)
        or not math.isfinite(factor)
        or not 1 <= factor <= 4
    ):
        raise SettingError(f"group_merge_factor must be a number from 1 to 4, not {factor!r}")
    return UpkeepSettings(
        merge_distance=float(merge),
        max_experiences=_whole("max_experiences", values["max_experiences"], 1, 100_000),
        max_prompt_tokens=_whole("max_prompt_tokens", values["max_prompt_tokens"], 50, 1_000_000),
        trace_ttl_seconds=_whole("trace_ttl_seconds", values["trace_ttl_seconds"], 1, 3650 * DAY, "seconds"),
        retention_seconds=_whole("retention_seconds", values["retention_seconds"], 1, 3650 * DAY, "seconds"),
        group_merge_wait_seconds=_whole(
            "group_merge_wait_seconds", values["group_merge_wait_seconds"], 0, 3650 * DAY, "seconds"
        ),
        group_merge_factor=float(factor),
    )
