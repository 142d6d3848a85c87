"""A study running: the driver, the trainable, the searcher and scheduler fixes, the object-store sharing (Ray)."""

from .driver import StudyOutcome, finish_study, run_study

__all__ = ["StudyOutcome", "finish_study", "run_study"]
