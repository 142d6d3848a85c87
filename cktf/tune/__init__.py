"""Hyper-parameter studies: Ray Tune (ASHA) + Optuna over a distiller's space, logged to MLflow.

``cktf tune STUDY.yaml`` -> :func:`run_study`; ``cktf export`` -> :func:`export_best`;
``cktf report`` -> :func:`write_report`; :func:`load_student` rebuilds an exported student.
Ray is imported only by the modules that need it (driver, trainable, searcher, scheduler).
"""

from .export import best_trial, export_best, load_student, resolve_study_dir
from .report import summarize, write_report
from .space import CKTF_SPACE, ParamSpec, default_space
from .study import StudyConfig, load_study, study_from_dict, validate_with_data

__all__ = [
    "CKTF_SPACE",
    "ParamSpec",
    "StudyConfig",
    "best_trial",
    "default_space",
    "export_best",
    "load_student",
    "load_study",
    "resolve_study_dir",
    "study_from_dict",
    "summarize",
    "validate_with_data",
    "write_report",
]
