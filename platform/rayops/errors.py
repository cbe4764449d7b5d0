"""One error hierarchy for rayops.

Every error carries a plain message that quotes the offending value. Errors define
``__reduce__`` so they survive being raised inside a Ray worker and re-raised on the driver.
"""

from __future__ import annotations

import re

_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@")


def redact(text: str) -> str:
    """``text`` with the credentials of every URL in it (``scheme://user:password@``)
    replaced by ``***``: a tracking URI may carry them, and messages reach logs and APIs."""
    return _USERINFO.sub(r"\1***@", text)


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's text on one line, for an error message (MLflow's, pyarrow's and
    botocore's can span pages), without credentials."""
    text = redact(" ".join(str(exc).split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def rayops_error_in(exc: BaseException) -> RayopsError | None:
    """Our error, also when Ray re-raises it wrapped from a task or a training worker."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, RayopsError):
            return current
        seen.add(id(current))
        current = getattr(current, "cause", None) or current.__cause__
    return None


class RayopsError(Exception):
    """Base class for every error rayops raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[type, tuple[str]]:
        return (self.__class__, (self.message,))

    def __str__(self) -> str:
        return self.message


class ConfigError(RayopsError):
    """The pipeline config is missing, unreadable or invalid."""


class StorageError(RayopsError):
    """A storage URI cannot be resolved or a path cannot be read or written."""


class DataError(RayopsError):
    """Input data does not match the declared schema or cannot be used."""


class TrainingError(RayopsError):
    """Training could not produce a usable model."""


class PredictionError(RayopsError):
    """A model could not answer valid input (non-finite outputs: a diverged model)."""


class TrackingError(RayopsError):
    """MLflow tracking or the model registry cannot do what was asked."""


class ModelFilesMissing(TrackingError):
    """A registered model version's files are gone from the artifact store."""


class GateError(TrackingError):
    """The promotion gate could not decide; nothing was promoted."""


class ServeError(RayopsError):
    """A model cannot be deployed or queried."""


class LabelsNotStored(ServeError):
    """True labels sent to a replica could not be stored; the sender may send them again."""


class HistoryUnavailable(ServeError):
    """A forecast sent no history and the curated data could not be read: the sender may
    retry, or send the history."""
