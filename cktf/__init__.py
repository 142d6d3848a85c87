"""cktf: contrastive knowledge transfer (Zhao, Chen & Zhao, ICASSP 2023) and its baselines, at scale."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``cktf.load_student(path)``: an exported student, ready for inference (imported lazily)."""
    if name == "load_student":
        from .tune.results.export import load_student

        return load_student
    raise AttributeError(f"module 'cktf' has no attribute {name!r}")
