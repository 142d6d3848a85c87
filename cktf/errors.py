"""User-facing errors. The CLI turns each into one clear message and exit code 2.

Every message names the offending field and how to fix it, and is raised before any
expensive work (decoding, training) starts.
"""

from __future__ import annotations


def did_you_mean(name: str, candidates: object, prefix: str = "; ") -> str:
    """``"; did you mean tau?"`` when a candidate is close to the misspelt ``name`` (else ``""``)."""
    import difflib

    names = [str(c) for c in candidates]  # type: ignore[union-attr]
    close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.6)
    if not close:  # a case or separator slip (NCE_K, nce-k) is a close match too
        norm = {n.lower().replace("-", "_"): n for n in names}
        found = norm.get(str(name).lower().replace("-", "_"))
        close = [found] if found else []
    return f"{prefix}did you mean {close[0]}?" if close else ""


class CKTFError(Exception):
    """Base class of errors caused by the user's input, not by a bug."""


class ConfigError(CKTFError, ValueError):
    """A config field has a bad value: ``ConfigError("train.epochs", "must be >= 1", "pass --epochs 10")``."""

    def __init__(self, field: str, problem: str, fix: str = ""):
        self.field, self.problem, self.fix = field, problem, fix
        msg = f"{field}: {problem}"
        super().__init__(msg + (f" (fix: {fix})" if fix else ""))

    def __reduce__(self):  # copy/pickle (Ray ships a trial's exception to the driver)
        return (type(self), (self.field, self.problem, self.fix))


class DataNotFoundError(CKTFError, FileNotFoundError):
    """A dataset is not where the data root says; the message says where it is expected and how to get it."""


class UnsafeDataError(CKTFError):
    """A data file is not what its format allows (e.g. a pickle that names code to run); it is never loaded."""

    def __init__(self, problem: str, fix: str = ""):
        self.problem, self.fix = problem, fix
        super().__init__(problem + (f" (fix: {fix})" if fix else ""))

    def __reduce__(self):
        return (type(self), (self.problem, self.fix))
