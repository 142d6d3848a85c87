"""Transfer learning (paper Section 3.2): distil on the target's unlabeled images, then a linear probe."""

from .probe import ProbeConfig, ProbedModel, linear_probe

__all__ = ["ProbeConfig", "ProbedModel", "linear_probe"]
