"""ASHA whose rungs survive a driver restart.

``Tuner.restore`` brings back the scheduler pickled at study start, with empty rungs
(ray-project/ray#30838, still open in the pinned Ray): a resumed study would stop
trials at non-rung epochs and compare them against nothing. This subclass writes its rungs (a
few numbers per trial) to the study's store (``asha_state.json``) after every change and reads them back the first time
it is used after a restore, together with the set of trials it stopped early: Ray's experiment
snapshot can lag the driver, so a restored study may restart a trial ASHA had already stopped; it is
stopped again at its first result. ``protect`` names a config that is never stopped early: the
study's baseline (paper-default) trial, so the report compares the best against a fully trained
baseline; its results still enter the rungs (the trainable itself exits at once when the study's trial index
already records it as pruned or finished).
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from ..results.reader import FAILURE_KEY
from ..results.store import StudyStore

#: the rungs' file in the study's store
STATE_NAME = "asha_state.json"


class PersistentASHA(ASHAScheduler):
    def __init__(self, *args, store: StudyStore, state_name: str = STATE_NAME, protect: Any = None, **kwargs):
        super().__init__(*args, **kwargs)
        # configs (the baselines: one per method in a study over methods) that always train to max_t
        self.protect = [dict(p) for p in (protect if isinstance(protect, list) else [protect] if protect else [])]
        self.store, self.state_name = store, state_name
        self._loaded = False
        self._stopped: set[str] = set()  # trials ASHA stopped early (a lagging Ray snapshot may restart them)

    # -------------------------------------------------------------- persistence
    def _load_once(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        state = self.store.read_json(self.state_name)
        if state is None:
            return
        for bracket, rungs in zip(self._brackets, state["brackets"]):
            by_milestone = {float(m): rec for m, rec in rungs}
            bracket._rungs = [(m, dict(by_milestone.get(float(m), {}))) for m, _ in bracket._rungs]
        self._num_stopped = int(state.get("num_stopped", 0))
        self._stopped = set(state.get("stopped", []))

    def _save(self) -> None:
        state = {
            "brackets": [[[m, rec] for m, rec in b._rungs] for b in self._brackets],
            "num_stopped": self._num_stopped,
            "stopped": sorted(self._stopped),
        }
        self.store.write_json(state, self.state_name, indent=None)

    # -------------------------------------------------------------- hooks
    def on_trial_add(self, tune_controller, trial) -> None:
        self._load_once()
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result) -> str:
        self._load_once()
        if result.get(FAILURE_KEY):  # a failed trial's last result never enters the rungs
            return TrialScheduler.STOP
        if trial.trial_id in self._stopped:  # stopped before a driver restart: stays stopped
            return TrialScheduler.STOP
        action = super().on_trial_result(tune_controller, trial, result)  # its value still enters the rung
        early = result.get(self._time_attr, 0) < self._max_t
        if action == TrialScheduler.STOP and early and self._protected(trial):
            action = TrialScheduler.CONTINUE
        if action == TrialScheduler.STOP and early:
            self._stopped.add(trial.trial_id)
        self._save()
        return action

    def on_trial_complete(self, tune_controller, trial, result) -> None:
        self._load_once()
        if result and result.get(FAILURE_KEY):
            self.on_trial_remove(tune_controller, trial)  # forget it without recording its value
        else:
            super().on_trial_complete(tune_controller, trial, result)
        self._save()

    def _protected(self, trial) -> bool:
        config = getattr(trial, "config", None) or {}
        return any(all(config.get(k) == v for k, v in p.items()) for p in self.protect if p)

    def rungs(self) -> list[tuple[float, dict[str, float]]]:
        """``[(milestone, {trial_id: metric})]`` of the first bracket (reports and tests)."""
        self._load_once()
        return [(m, dict(r)) for m, r in self._brackets[0]._rungs]
