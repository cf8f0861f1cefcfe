"""What the embeddings and LLM adapters share about an OpenAI-compatible API: its base URL, and
failures told as one sentence naming the setting an operator has to fix."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

RETRIED_STATUSES = frozenset({408, 409, 429})  # and every 5xx: the openai client retries these


def api_base(url: str, endpoint_suffixes: tuple[str, ...]) -> str:
    """The base URL the openai client wants, from what an operator may write.

    ``http://host:8000`` becomes ``http://host:8000/v1`` (the usual mount of an OpenAI-compatible
    API); a URL to an endpoint itself (one of ``endpoint_suffixes``) loses that suffix; anything
    else is kept.
    """
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/")
    for suffix in endpoint_suffixes:
        path = path.removesuffix(suffix)
    return urlunsplit(parts._replace(path=path or "/v1"))


def innermost_cause(error: BaseException) -> str:
    """The innermost reason of a connection failure, e.g. 'Connection refused'."""
    innermost: BaseException = error
    while innermost.__cause__ is not None:
        innermost = innermost.__cause__
    text = " ".join(str(innermost).split())
    return text or type(innermost).__name__


@dataclass(frozen=True)
class ApiFailure:
    """How to name an adapter's API and its settings in a failure sentence."""

    where: str  # e.g. "the LLM API at GRPOD_LLM_BASE_URL=... (model 'm')"
    url_setting: str
    model_setting: str
    model: str
    key_hint: str  # e.g. "set GRPOD_LLM_API_KEY to a key it accepts"
    max_retries: int
    timeout: float
    timeout_setting: str | None  # named in the timeout sentence when the operator can raise it
    answer_kind: str  # e.g. "chat completion"
    endpoint: str  # e.g. "/v1/chat/completions"

    def describe(self, error: BaseException) -> str:
        """One sentence for a failed call (after the client's own retries)."""
        import openai

        if isinstance(error, openai.APIStatusError):
            return self.status_sentence(error.status_code, error.message)
        if isinstance(error, openai.APITimeoutError):
            if self.timeout_setting is None:
                return (
                    f"{self.where} did not answer within {self.timeout:g} seconds in {self.attempts()}; "
                    "check that the server is up and not overloaded."
                )
            return (
                f"{self.where} did not answer within {self.timeout_setting}={self.timeout:g} seconds "
                f"in {self.attempts()}; check that the server is up and not overloaded, or raise the timeout."
            )
        if isinstance(error, openai.APIConnectionError):
            return (
                f"{self.where} could not be reached in {self.attempts()} ({innermost_cause(error)}); "
                "check that the server is running and that the URL is right."
            )
        return self.not_an_answer(str(error))

    def not_an_answer(self, what: object) -> str:
        """The sentence for an answer that is not the API's (an error page from a proxy, say)."""
        said = " ".join(str(what).split())[:120]
        return (
            f"{self.where} gave an answer that is not an OpenAI {self.answer_kind} ({said}); "
            f"point {self.url_setting} at an OpenAI-compatible {self.endpoint} API."
        )

    def attempts(self) -> str:
        count = self.max_retries + 1
        return f"{count} attempt{'s' if count != 1 else ''}"

    def status_sentence(self, status: int, message: str) -> str:
        said = " ".join(message.split())[:200]
        if status in (401, 403):
            return f"{self.where} refused the API key with HTTP {status} ({said}); {self.key_hint}."
        if status == 404:
            return (
                f"{self.where} answered HTTP 404 ({said}); check {self.model_setting}={self.model} and that "
                f"{self.url_setting} is the API's base URL (the one ending in /v1)."
            )
        if status in RETRIED_STATUSES or status >= 500:
            return (
                f"{self.where} still answered HTTP {status} after {self.attempts()} with backoff ({said}); "
                "the task will be retried later."
            )
        return f"{self.where} rejected the request with HTTP {status} ({said})."
