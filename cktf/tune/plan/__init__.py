"""A study before it runs: its schema (:mod:`.schema`), reading a file (:mod:`.load`) and the checks against the
data and models that resolve it into a :class:`StudyPlan` (:mod:`.validate`). Nothing here imports Ray."""

from .baseline import baseline_point
from .load import load_study, study_from_dict
from .schema import StudyConfig, study_json_schema
from .validate import StudyPlan, plan_study

__all__ = [
    "StudyConfig",
    "StudyPlan",
    "baseline_point",
    "load_study",
    "plan_study",
    "study_from_dict",
    "study_json_schema",
]
