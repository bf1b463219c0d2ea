"""Resumable Optuna searches: with a persistent ``storage`` (sqlite) a search that was
interrupted and is started again with the same command runs only the trials its budget
still lacks (``n_trials`` counts the finished trials already in the study), and trials
the dead process left RUNNING are marked FAIL so the sampler ignores them. Used by
``conf/hparams_search/*.yaml`` through a Hydra callback (Hydra's own Optuna sweeper)."""

from __future__ import annotations

import logging
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, read_write

log = logging.getLogger(__name__)


def finished_trials(storage: str | None, study_name: str | None) -> int:
    """Trials of the study that finished (complete, pruned or failed); RUNNING ones left
    by a killed search are marked FAIL first. 0 when the study doesn't exist yet."""
    if not storage or not study_name:
        return 0
    import optuna
    from optuna.trial import TrialState

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return 0
    stale = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    for t in stale:
        study.tell(t.number, state=TrialState.FAIL)
    if stale:
        log.info(f"Optuna: marked {len(stale)} trial(s) of an interrupted search as failed")
    return sum(t.state.is_finished() for t in study.get_trials(deepcopy=False)) - len(stale)


class ResumeStudy(Callback):
    """Hydra callback (``hydra.callbacks``): before the Optuna sweeper starts, turn
    ``hydra.sweeper.n_trials`` from "trials to run now" into the study's total budget by
    subtracting the trials the persistent study already finished."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweeper = config.hydra.sweeper
        if "n_trials" not in sweeper:
            return
        done = finished_trials(sweeper.get("storage"), sweeper.get("study_name"))
        if done:
            left = max(0, sweeper.n_trials - done)
            log.info(
                f"Optuna: study {sweeper.study_name} has {done} finished trial(s); "
                f"running {left} more (n_trials={sweeper.n_trials} in all)"
            )
            with read_write(sweeper):
                sweeper.n_trials = left
                # A seeded sampler would start the same sequence again (the random start-up
                # trials repeat): continue with a seed of its own.
                if sweeper.get("sampler") and sweeper.sampler.get("seed") is not None:
                    sweeper.sampler.seed = int(sweeper.sampler.seed) + done
