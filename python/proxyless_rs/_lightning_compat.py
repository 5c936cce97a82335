"""Lightning's private loop state that the strategies' step touches, in one place (Lightning 1.9
for NNI 2.10, 2.0 for NNI 3.0): a Lightning release that moves it breaks here."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator


def _count_optimizer_step(trainer: Any) -> None:
    loop = trainer.fit_loop.epoch_loop
    manual = getattr(loop, 'manual_optimization', None)  # Lightning 2.x
    if manual is None:
        manual = loop.batch_loop.manual_loop  # Lightning 1.9
    manual.optim_step_progress.increment_ready()
    manual.optim_step_progress.increment_completed()


@contextlib.contextmanager
def counted_optimizer_step(trainer: Any) -> Iterator[None]:
    """Makes the optimizer step within count once in ``trainer.global_step``, as a
    ``LightningOptimizer.step`` does under manual optimization. NNI 2.10's one-shot module steps
    the raw optimizers, so its global step stays 0: ``ModelCheckpoint`` then saves nothing (it
    skips a step it has saved) and ``max_steps`` never stops a search. NNI 3.0's steps through
    ``LightningOptimizer``, which counts already: a step counted within is not counted again."""
    before = trainer.global_step
    yield
    if trainer.global_step == before:
        _count_optimizer_step(trainer)
