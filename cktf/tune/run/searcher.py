"""Optuna search that tells ASHA-stopped trials as PRUNED, not COMPLETE.

Ray's ``OptunaSearch.on_trial_complete`` tells Optuna COMPLETE with the last reported value, so a
trial ASHA stopped after its grace period enters TPE as if its early accuracy were final
(docs/architecture.md, 'Optuna state'). TPE ranks PRUNED trials by the step they reached and then by
value, which is the right reading of an early stop. A trial is PRUNED when it ended without an
error before ``max_t`` iterations. Its final step is not delivered through ``on_trial_result``,
so it is reported here before telling.

Lives in an importable module: Ray pickles the searcher by reference on every experiment snapshot.
"""

from __future__ import annotations

import logging
import math

from ray.tune.search.optuna import OptunaSearch

from ..results.reader import FAILURE_KEY

log = logging.getLogger(__name__)


class PrunedAwareOptunaSearch(OptunaSearch):
    def __init__(self, *args, max_t: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_t = int(max_t)

    @staticmethod
    def _step(result: dict) -> int:
        return int(result.get("epochs_done", result.get("training_iteration", 0)))

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Intermediate value at step = epochs done (a resumed trial does not re-report a step)."""
        if trial_id in self._completed_trials or trial_id not in self._ot_trials or result.get(FAILURE_KEY):
            return
        ot_trial = self._ot_trials[trial_id]
        step, value = self._step(result), result.get(self.metric)
        if value is not None and step not in self._reported(ot_trial):
            ot_trial.report(float(value), step)

    @staticmethod
    def _reported(ot_trial) -> dict:
        return ot_trial.storage.get_trial(ot_trial._trial_id).intermediate_values

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        import optuna

        if result and result.get(FAILURE_KEY):  # failed for good (a non-finite loss): Optuna is told FAIL
            error = True
        if error or not result or trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        step = self._step(result)
        value = result.get(self.metric)
        if step >= self.max_t:
            return super().on_trial_complete(trial_id, result, error)
        ot_trial = self._ot_trials[trial_id]
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            if step not in self._reported(ot_trial):
                ot_trial.report(float(value), step)
        try:
            self._ot_study.tell(ot_trial, state=optuna.trial.TrialState.PRUNED)
        except Exception as exc:  # e.g. already told after a driver restart
            log.warning("optuna tell PRUNED for %s: %s", trial_id, exc)
        self._completed_trials.add(trial_id)
