"""cktf: contrastive knowledge transfer (Zhao, Chen & Zhao, ICASSP 2023) and its baselines, at scale.

The Python API (docs/python-api.md), imported lazily so that ``import cktf`` pulls in neither torch nor Ray:

* ``cktf.run_study(path_or_dict, overrides=..., resume=...)`` and ``cktf.run_campaign(...)``: what ``cktf tune`` and
  ``cktf campaign`` do, returning a results object (``.best``, ``.trials`` as a DataFrame, ``.report()``,
  ``.export(path)``);
* ``cktf.open_study(dir_or_name)`` / ``cktf.open_campaign(...)``: the results of a study or campaign that ran;
* ``cktf.load_student(path)``: an exported student, ready for inference.
"""

__version__ = "0.1.0"

_API = {
    "run_study": "cktf.api",
    "run_campaign": "cktf.api",
    "open_study": "cktf.results",
    "open_campaign": "cktf.results",
    "load_student": "cktf.tune.results.export",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'cktf' has no attribute {name!r}")
