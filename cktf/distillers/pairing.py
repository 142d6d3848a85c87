"""Which pairing of student and teacher modules a method uses: the official one, or the generalised extension.

The official code (RepDistiller, CKTF) pairs layers of models it ships; CKTF pairs modules within one family only
(docs/algorithm.md §4). For models brought from a library or your own code (docs/models.md), a pair across families
may have stage lists of unequal length and stage shapes the official adapters cannot map. Those pairs use the
**generalised pairing**, an extension that is not in any paper or official code:

* stage ``k`` of ``n_s`` student stages is paired with teacher stage :func:`depth_map` ``(n_s, n_t)[k-1]`` (the same
  relative depth, last with last), where a method pairs stages by position and the lengths differ;
* a feature map the official regressor cannot map (``ConvReg``: twice, half or at least the teacher's size) is
  resized to the teacher's side and projected by a 1x1 conv (:class:`~cktf.distillers.adapters.ResizeReg`);
* CKTF gives each critic the input sizes of its own two features (no zero-padding of the student), and chooses
  among the teacher blocks by the cosine of the maps brought to a common shape
  (:func:`~cktf.losses.select_stage_pair_generalised`);
* FSP compares the matrices of the student's maps projected (1x1 conv) to the mapped teacher layers' channels.

It is used only for a pair across families of which at least one model is a library or user model
(:func:`may_generalise`): a pair within one family, and every pair of the paper's zoo, keeps the official behaviour
(and its refusals). Each term records what it used as its ``pairing`` (``official`` / ``generalised``), which a run
logs as the param ``<method>/pairing`` (:meth:`cktf.distillers.Distiller.run_params`).
"""

from __future__ import annotations

from ..models import DistillModel

OFFICIAL, GENERALISED = "official", "generalised"


def same_family(student: DistillModel, teacher: DistillModel) -> bool:
    """Whether the two models are of one family (``tv:resnet``, ``timm:convnext``, ``zoo:CifarResNet``, ...)."""
    return student.family_name() == teacher.family_name()


def may_generalise(student: DistillModel, teacher: DistillModel) -> bool:
    """True for a pair across families with at least one library or user model (module docstring)."""
    return not same_family(student, teacher) and bool(student.source or teacher.source)


def depth_map(n_student: int, n_teacher: int) -> list[int]:
    """For student stages ``1..n_student``, the teacher stage (1-based) at the same relative depth.

    ``round(k * n_teacher / n_student)`` (halves up), kept within ``1..n_teacher``: the last stage always pairs with
    the last, and equal lengths pair stage ``k`` with stage ``k``.
    """
    if n_student < 1 or n_teacher < 1:
        raise ValueError(f"both models need stages, got {n_student} and {n_teacher}")
    return [min(n_teacher, max(1, int(k * n_teacher / n_student + 0.5))) for k in range(1, n_student + 1)]
