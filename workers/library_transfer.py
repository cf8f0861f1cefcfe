"""Shareable libraries, the decisions: a version as a JSON document, and a document as operations.

Plain data. An export names the models that learned its experiences (the paper's authors note
that experiences learned with one model may not serve another) and summarises each experience's
provenance; its traces stay at home. An import reads such a document back, refusing a malformed
one with one sentence, and turns every experience whose text the library lacks into an ADD. The
database shell is ``daemon/library_admin.py``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeGuard

from grpod.schema.errors import OperatorError
from grpod.schema.library import Experience
from grpod.workers.library import LibraryVersion, Provenance
from grpod.workers.operations import Note, Operation, normalised, validate

FORMAT = "grpod-library"
FORMAT_VERSION = 1
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
MAX_EXPERIENCES = 10_000
# A text this long is a document (or a payload), not a rule: cutting it to the word limit would
# import a fragment nobody wrote, so it is refused. experience_max_words is at most 200.
MAX_TEXT_CHARS = 2_000

ModelsSource = Literal["recorded", "configured"]


# Export --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CallModels:
    """The models of the LLM calls behind a domain's versions, as the ledger recorded them: by
    distillation (its summary, advantage and operations calls) and by version (the calls the
    version made itself: a window's consolidation, a consolidation's merges)."""

    by_distillation: Mapping[int, frozenset[str]]
    by_version: Mapping[int, frozenset[str]]


def _ints(value: Any) -> list[int]:
    items = value if isinstance(value, list) else []
    return [item for item in items if isinstance(item, int) and not isinstance(item, bool)]


def provenance_references(library: LibraryVersion) -> tuple[list[int], list[int]]:
    """The distillations and versions the experiences' provenance names: whose calls to look up."""
    distillations: set[int] = set()
    versions: set[int] = set()
    for experience in library.experiences.values():
        for entry in experience.provenance:
            distillations.update(_ints(entry.get("distillations")))
            versions.update(_ints([entry.get("version")]))
    return sorted(distillations), sorted(versions)


def _imported(entry: Mapping[str, Any]) -> Mapping[str, Any] | None:
    source = entry.get("imported_from")
    return source if isinstance(source, Mapping) else None


def experience_models(experience: Experience, calls: CallModels) -> set[str]:
    """The models behind every change of the experience: the calls of the distillations that
    proposed it and of the versions that changed it, and the models an import of it named."""
    models: set[str] = set()
    for entry in experience.provenance:
        for distillation in _ints(entry.get("distillations")):
            models |= calls.by_distillation.get(distillation, frozenset())
        version = entry.get("version")
        if isinstance(version, int):
            models |= calls.by_version.get(version, frozenset())
        source = _imported(entry)
        if source is not None:
            models |= {model for model in source.get("models") or () if isinstance(model, str) and model}
    return models


def summarise_provenance(experience: Experience, calls: CallModels) -> dict[str, Any]:
    """What a receiver needs to know of an experience's history: no trace lists, only counts."""
    versions: set[int] = set()
    distillations: set[int] = set()
    groups: set[int] = set()
    traces: set[str] = set()
    merged: set[int] = set()
    imports: list[dict[str, Any]] = []
    operations: list[str] = []
    for entry in experience.provenance:
        version = entry.get("version")
        if isinstance(version, int):
            versions.add(version)
        operations.append(str(entry.get("operation", "")))
        distillations.update(_ints(entry.get("distillations")))
        groups.update(_ints(entry.get("groups")))
        traces.update(str(t) for t in entry.get("traces") or () if isinstance(t, str))
        merged.update(i for i in _ints(entry.get("merged")) if i != experience.id)
        source = _imported(entry)
        if source is not None:
            imports.append({key: source[key] for key in ("domain", "version", "models", "id") if key in source})
    return {
        "versions": sorted(versions),
        "operations": operations,
        "distillations": len(distillations),
        "groups": len(groups),
        "traces": len(traces),
        "merged": sorted(merged),
        "imported_from": imports,
        "models": sorted(experience_models(experience, calls)),
    }


def build_document(
    library: LibraryVersion,
    calls: CallModels,
    *,
    configured_model: str,
    embedding_model: str | None,
    labels: Sequence[str],
    exported_at: datetime,
) -> dict[str, Any]:
    """One version as a shareable document. Its ``models`` are those the ledger recorded behind its
    experiences (``models_source`` ``recorded``); when none is (versions an operator or a test
    made, or a library from before the ledger), the deployment's configured LLM (``configured``)."""
    experiences = []
    recorded: set[str] = set()
    for experience_id in sorted(library.experiences):
        experience = library.experiences[experience_id]
        summary = summarise_provenance(experience, calls)
        recorded.update(summary["models"])
        experiences.append({"id": experience.id, "text": experience.text, "provenance": summary})
    source: ModelsSource = "recorded" if recorded else "configured"
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "domain": library.domain,
        "version": library.version,
        "labels": sorted(labels),
        "exported_at": exported_at.isoformat(),
        "models": sorted(recorded) if recorded else [configured_model],
        "models_source": source,
        "embedding_model": embedding_model,
        "experiences": experiences,
    }


# Import --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where a document's experiences were learned."""

    domain: str
    version: int
    models: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"domain": self.domain, "version": self.version, "models": list(self.models)}


@dataclass(frozen=True)
class SharedExperience:
    id: int | None  # its id in the source library, when the document gives one
    text: str


@dataclass(frozen=True)
class Document:
    source: Source
    experiences: tuple[SharedExperience, ...]


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _not_an_export(origin: str, why: str) -> OperatorError:
    return OperatorError(f"{origin} is not a grpod library export: {why}; `grpod library export` writes one.")


def read_document(raw: bytes, origin: str) -> Document:
    """A document from a file's bytes; anything else is refused with one sentence."""
    if len(raw) > MAX_DOCUMENT_BYTES:
        raise OperatorError(f"{origin} is over {MAX_DOCUMENT_BYTES} bytes; a library export is far smaller.")
    try:
        text = raw.decode("utf-8-sig")  # a byte order mark from an editor is no reason to refuse
    except UnicodeDecodeError:
        raise OperatorError(f"{origin} is not UTF-8 text; a library export is JSON.") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise OperatorError(
            f"{origin} is not JSON ({error.msg} at line {error.lineno}, column {error.colno})."
        ) from None
    return parse_document(data, origin)


def parse_document(data: Any, origin: str) -> Document:
    if not isinstance(data, Mapping) or data.get("format") != FORMAT:
        raise _not_an_export(origin, f'it has no "format": "{FORMAT}"')
    format_version = data.get("format_version")
    if not _is_int(format_version) or format_version < 1:
        raise _not_an_export(origin, f"its format_version is {format_version!r}, not a whole number")
    if format_version > FORMAT_VERSION:
        raise OperatorError(
            f"{origin} is in format version {format_version} of a newer grpod; this one reads version {FORMAT_VERSION}."
        )
    domain, version, models = data.get("domain"), data.get("version"), data.get("models")
    if not isinstance(domain, str) or not domain:
        raise _not_an_export(origin, "it names no source domain")
    if not _is_int(version) or version < 0:
        raise _not_an_export(origin, f"its version is {version!r}, not a version number")
    if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
        raise _not_an_export(origin, "its models are not a list of model names")
    items = data.get("experiences")
    if not isinstance(items, list):
        raise _not_an_export(origin, "it has no list of experiences")
    if len(items) > MAX_EXPERIENCES:
        raise OperatorError(f"{origin} holds {len(items)} experiences; at most {MAX_EXPERIENCES} are imported at once.")
    experiences = []
    for position, item in enumerate(items, start=1):
        experiences.append(_experience(item, position, origin))
    return Document(Source(domain, version, tuple(models)), tuple(experiences))


def _experience(item: Any, position: int, origin: str) -> SharedExperience:
    if not isinstance(item, Mapping):
        raise _not_an_export(origin, f"experience {position} of its list is not an object")
    raw_id = item.get("id")
    if raw_id is not None and (not _is_int(raw_id) or raw_id < 1):
        raise _not_an_export(origin, f"experience {position} of its list has the id {raw_id!r}")
    named = f"experience [{raw_id}]" if raw_id is not None else f"experience {position} of the list"
    text = item.get("text")
    if not isinstance(text, str):
        raise OperatorError(f"{named} of {origin} has no text.")
    if not text.strip():
        raise OperatorError(f"{named} of {origin} has an empty text.")
    if len(text) > MAX_TEXT_CHARS:
        raise OperatorError(
            f"{named} of {origin} is {len(text)} characters long; an experience may have at most {MAX_TEXT_CHARS}."
        )
    return SharedExperience(raw_id, text.strip())


@dataclass(frozen=True)
class Skipped:
    """An experience of the document not imported: its text is in the library already (``same_as``
    names the experience), or earlier in the document (``same_as`` None)."""

    source_id: int | None
    text: str
    same_as: int | None

    def to_json(self) -> dict[str, Any]:
        return {"from": self.source_id, "text": self.text, "same_as": self.same_as}


@dataclass(frozen=True)
class ImportPlan:
    operations: tuple[Operation, ...]  # ADDs, in the document's order
    origins: Mapping[str, int | None]  # normalised text of each ADD -> its id in the source
    skipped: tuple[Skipped, ...]
    notes: tuple[Note, ...]  # every experience not taken as it came, and why


def plan_import(document: Document, library: Mapping[int, str], max_words: int) -> ImportPlan:
    """The ADDs that bring the document's new texts into ``library``, validated as any operation
    is (a text over ``max_words`` is cut; one that is no rule is dropped, with a note)."""
    existing = {normalised(text): experience_id for experience_id, text in library.items()}
    source = document.source
    reason = f"imported from {source.domain} version {source.version}"
    operations: list[Operation] = []
    origins: dict[str, int | None] = {}
    skipped: list[Skipped] = []
    notes: list[Note] = []
    for shared in document.experiences:
        key = normalised(shared.text)
        if key in existing or key in origins:
            same_as = existing.get(key)
            skipped.append(Skipped(shared.id, shared.text, same_as))
            why = f"already in the library as experience {same_as}" if same_as is not None else "twice in the file"
            notes.append(Note(f"ADD {shared.text}"[:200], "dropped", why))
            continue
        valid, said = validate([Operation("ADD", shared.text, None, reason)], library, max_words)
        notes.extend(said)
        if not valid:
            continue
        operation = valid[0]
        assert operation.text is not None
        cut = normalised(operation.text)
        if cut in origins:  # two long texts that agree up to the word limit
            skipped.append(Skipped(shared.id, shared.text, None))
            notes.append(Note(f"ADD {shared.text}"[:200], "dropped", "cut to the word limit, it is twice in the file"))
            continue
        operations.append(operation)
        origins[cut] = shared.id
    return ImportPlan(tuple(operations), origins, tuple(skipped), tuple(notes))


def imported_provenance(plan: ImportPlan, source: Source) -> Provenance:
    """Each imported experience records where it came from (``next_experiences`` adds the
    version and the operation, as to every provenance entry)."""

    def provenance(operation: Operation) -> Mapping[str, Any]:
        entry = source.to_json()
        origin = plan.origins.get(normalised(operation.text or ""))
        if origin is not None:
            entry["id"] = origin
        return {"imported_from": entry}

    return provenance


def model_warning(source: Source, configured_model: str) -> str | None:
    """A word of caution when the document was learned with another model than this deployment's."""
    if set(source.models) == {configured_model}:
        return None
    named = ", ".join(source.models) if source.models else "no model it names"
    return (
        f"the experiences of {source.domain} version {source.version} were learned with {named}, and this "
        f"deployment's LLM is {configured_model}; experiences learned with one model may not serve another "
        "(the candidate's rewards will tell)."
    )
