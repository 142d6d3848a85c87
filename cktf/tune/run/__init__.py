"""A run on the engine (imports Ray): the run context and its stages, the trainable, the teacher service, the
searcher and scheduler fixes, the object-store sharing, the live view; a study's stages (:mod:`.study`)."""

from .context import RunContext, RunOptions
from .study import StudyOutcome, finish_study, run_study

__all__ = ["RunContext", "RunOptions", "StudyOutcome", "finish_study", "run_study"]
