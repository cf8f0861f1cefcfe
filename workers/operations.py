"""Library operations (ADD, UPDATE, DELETE, NONE): parse, validate, consolidate, apply.

Plain functions over plain data. An LLM proposes operations; nothing it says can crash a stage or
corrupt a library: an invalid operation is repaired when its intent is clear, or dropped, and each
repair or drop carries its reason. Applying never renumbers: a new experience gets an id never used
before in its domain (the reference code renumbered every step; grpod does not).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

Kind = Literal["ADD", "UPDATE", "DELETE", "NONE"]
KINDS: tuple[Kind, ...] = ("ADD", "UPDATE", "DELETE", "NONE")
DEFAULT_MAX_WORDS = 48
MIN_WORDS = 4  # "When X, do Y" at the least: anything shorter ("When...") is not a rule


@dataclass(frozen=True)
class Operation:
    kind: Kind
    text: str | None = None
    experience_id: int | None = None
    reason: str = ""
    sources: tuple[int, ...] = ()  # the distillations that proposed it (for provenance)

    def to_json(self) -> dict[str, Any]:
        return {
            "operation": self.kind,
            "id": self.experience_id,
            "text": self.text,
            "reason": self.reason,
            "sources": list(self.sources),
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> Operation:
        """An operation as ``to_json`` stored it (our own JSON: trusted, not an LLM's)."""
        kind = next((known for known in KINDS if known == value["operation"]), None)
        if kind is None:
            raise ValueError(f"unknown operation {value['operation']!r}")
        raw_id = value.get("id")
        return cls(
            kind=kind,
            text=value.get("text"),
            experience_id=int(raw_id) if raw_id is not None else None,
            reason=str(value.get("reason") or ""),
            sources=tuple(int(source) for source in value.get("sources") or ()),
        )


@dataclass(frozen=True)
class Note:
    """What happened to one proposed operation that was not taken as it came (or a candidate that
    became an ADD without an operations call: ``added``)."""

    proposed: str
    action: Literal["dropped", "repaired", "added"]
    why: str

    def to_json(self) -> dict[str, str]:
        return {"proposed": self.proposed, "action": self.action, "why": self.why}


def _words(text: str) -> list[str]:
    return text.split()


def repeats_itself(words: Sequence[str]) -> bool:
    """A looping answer ("When 2022 2022 2022 ..."): fewer than a third of its words are different."""
    return len({word.lower().strip(".,;:!?") for word in words}) * 3 < len(words)


def normalised(text: str) -> str:
    """Text compared for duplicates: case, spacing and trailing punctuation do not count."""
    return re.sub(r"\s+", " ", text.strip().lower()).rstrip(".!;:")


def parse_operations(data: Any) -> tuple[list[Operation], list[Note]]:
    """Operations from an LLM's JSON: a list, or an object holding one under 'operations'.

    Tolerant of the usual variations: 'op'/'operation'/'type' for the kind, any case; 'id' or
    'experience_id'; 'text' or 'content'.
    """
    items = data.get("operations") if isinstance(data, Mapping) else data
    if not isinstance(items, list):
        return [], [Note(repr(data)[:200], "dropped", "no list of operations in the answer")]
    operations: list[Operation] = []
    notes: list[Note] = []
    for item in items:
        if not isinstance(item, Mapping):
            notes.append(Note(repr(item)[:200], "dropped", "an operation must be an object"))
            continue
        raw_kind = next((item[k] for k in ("operation", "op", "type", "kind") if k in item), None)
        kind = str(raw_kind).strip().upper() if raw_kind is not None else ""
        if kind not in KINDS:
            notes.append(Note(repr(dict(item))[:200], "dropped", f"unknown operation {raw_kind!r}"))
            continue
        raw_id = next((item[k] for k in ("id", "experience_id") if k in item and item[k] is not None), None)
        experience_id: int | None = None
        if raw_id is not None:
            digits = re.sub(r"\D", "", str(raw_id))  # "E12", "[12]", "12" all mean 12
            if not digits:
                notes.append(Note(repr(dict(item))[:200], "dropped", f"id {raw_id!r} is not a number"))
                continue
            experience_id = int(digits)
        raw_text = next((item[k] for k in ("text", "content", "experience") if k in item), None)
        text = str(raw_text).strip() if raw_text is not None else None
        reason = str(item.get("reason") or "").strip()
        merged_from = item.get("merged_from")  # a consolidation names the proposals it merged
        sources = tuple(n for n in merged_from if isinstance(n, int)) if isinstance(merged_from, list) else ()
        operations.append(Operation(kind, text or None, experience_id, reason, sources))
    return operations, notes


def validate(
    operations: Iterable[Operation], library: Mapping[int, str], max_words: int = DEFAULT_MAX_WORDS
) -> tuple[list[Operation], list[Note]]:
    """Check each operation against the current library: drop or repair what is invalid."""
    valid: list[Operation] = []
    notes: list[Note] = []
    existing = {normalised(text): experience_id for experience_id, text in library.items()}
    for operation in operations:
        shown = f"{operation.kind} {operation.experience_id or ''} {operation.text or ''}".strip()[:200]
        if operation.kind == "NONE":
            continue
        if operation.kind == "DELETE":
            # A DELETE needs an id, never a text (the reference code dropped a DELETE with null text).
            if operation.experience_id not in library:
                notes.append(Note(shown, "dropped", f"DELETE of unknown experience {operation.experience_id}"))
                continue
            valid.append(replace(operation, text=None))
            continue
        if not operation.text:
            notes.append(Note(shown, "dropped", f"{operation.kind} without text"))
            continue
        text = operation.text
        words = _words(text)
        if len(words) < MIN_WORDS:
            notes.append(Note(shown, "dropped", f"{len(words)} words are too few for a rule"))
            continue
        if repeats_itself(words):
            notes.append(Note(shown, "dropped", "the text repeats itself (a degenerate answer)"))
            continue
        if len(words) > max_words:
            text = " ".join(words[:max_words])
            notes.append(Note(shown, "repaired", f"cut from {len(words)} to {max_words} words"))
        duplicate_of = existing.get(normalised(text))
        if operation.kind == "UPDATE" and operation.experience_id not in library:
            if duplicate_of is not None:
                notes.append(Note(shown, "dropped", f"UPDATE of unknown id; the text is experience {duplicate_of}"))
                continue
            notes.append(Note(shown, "repaired", f"UPDATE of unknown id {operation.experience_id}; added instead"))
            operation = Operation("ADD", text, None, operation.reason, operation.sources)
        elif operation.kind == "ADD" and duplicate_of is not None:
            notes.append(Note(shown, "dropped", f"the same as experience {duplicate_of}"))
            continue
        elif operation.kind == "UPDATE" and duplicate_of == operation.experience_id:
            continue  # an UPDATE to the same text changes nothing
        valid.append(replace(operation, text=text))
    return valid, notes


def consolidate(operations: Sequence[Operation]) -> tuple[list[Operation], list[Note]]:
    """One consistent set from the operations of several groups (the deterministic rules; an LLM
    may merge texts first): DELETE wins over UPDATE of the same id, the last UPDATE of an id wins,
    duplicate ADDs become one."""
    notes: list[Note] = []
    deleted = {op.experience_id for op in operations if op.kind == "DELETE"}
    updates: dict[int, Operation] = {}
    adds: dict[str, Operation] = {}
    for op in operations:
        if op.kind == "UPDATE" and op.experience_id is not None:
            if op.experience_id in deleted:
                notes.append(
                    Note(f"UPDATE {op.experience_id}", "dropped", "the experience is deleted in the same window")
                )
            else:
                if op.experience_id in updates:
                    notes.append(
                        Note(f"UPDATE {op.experience_id}", "repaired", "several UPDATEs of one id: the last kept")
                    )
                updates[op.experience_id] = op
        elif op.kind == "ADD" and op.text:
            key = normalised(op.text)
            if key in adds:
                kept = adds[key]
                adds[key] = replace(kept, sources=merged_sources(kept.sources, op.sources))
                notes.append(Note(f"ADD {op.text[:80]}", "dropped", "the same ADD came from another group"))
            else:
                adds[key] = op
    result = [op for op in operations if op.kind == "DELETE"]
    result += list(updates.values()) + list(adds.values())
    seen_deletes: set[int | None] = set()
    unique: list[Operation] = []
    for op in result:
        if op.kind == "DELETE":
            if op.experience_id in seen_deletes:
                continue
            seen_deletes.add(op.experience_id)
        unique.append(op)
    return unique, notes


def merged_sources(*sources: Iterable[int]) -> tuple[int, ...]:
    return tuple(sorted({source for group in sources for source in group}))


@dataclass(frozen=True)
class Applied:
    library: dict[int, str]
    next_id: int
    added: dict[int, str]  # new id -> text


def apply(library: Mapping[int, str], operations: Sequence[Operation], next_id: int) -> Applied:
    """The next library: ids stay stable; new experiences get ``next_id``, ``next_id + 1``, ..."""
    result = dict(library)
    added: dict[int, str] = {}
    for op in operations:
        if op.kind == "DELETE" and op.experience_id is not None:
            result.pop(op.experience_id, None)
        elif op.kind == "UPDATE" and op.experience_id in result and op.text:
            result[op.experience_id] = op.text
        elif op.kind == "ADD" and op.text:
            result[next_id] = op.text
            added[next_id] = op.text
            next_id += 1
    return Applied(result, next_id, added)
