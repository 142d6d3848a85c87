"""Hyper-parameter studies: Ray Tune (ASHA) + Optuna over a method's space, logged to MLflow.

Three stages, one folder each (docs/architecture.md):

* :mod:`.plan` -- the study file's schema, its loading (YAML, ``${VAR}``, ``--set``) and its validation against the
  data and the models, resolved into an immutable :class:`StudyPlan`;
* :mod:`.run` -- the driver, the trainable, the searcher and scheduler, the object-store sharing (imports Ray);
* :mod:`.results` -- the one results reader (trial index, state, best), export, report and MLflow lineage.

``cktf tune STUDY.yaml`` -> :func:`load_study`, :func:`plan_study`, :func:`cktf.tune.run.run_study`;
``cktf export`` -> :func:`export_best`; ``cktf report`` -> :func:`write_report`.
"""

from .plan import StudyConfig, StudyPlan, load_study, plan_study, study_from_dict, study_json_schema
from .results import StudyResults, export_best, load_student, resolve_study_dir, summarize, write_report

__all__ = [
    "StudyConfig",
    "StudyPlan",
    "StudyResults",
    "export_best",
    "load_student",
    "load_study",
    "plan_study",
    "resolve_study_dir",
    "study_from_dict",
    "study_json_schema",
    "summarize",
    "write_report",
]
