"""A study's results: the one reader (trial index, state, best), export, report and MLflow lineage.

Reading results needs no Ray: :mod:`.lineage` (the driver's MLflow callback) is imported only by the driver.
"""

from .export import export_best, load_student
from .reader import StudyResults, TrialIndex, read_state, resolve_study_dir, write_state
from .report import summarize, write_report
from .store import StudyStore

__all__ = [
    "StudyResults",
    "StudyStore",
    "TrialIndex",
    "export_best",
    "load_student",
    "read_state",
    "resolve_study_dir",
    "summarize",
    "write_report",
    "write_state",
]
