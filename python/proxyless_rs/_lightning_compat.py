"""Lightning's private loop state that the strategies' step touches, in one place (Lightning 1.9
for NNI 2.10, 2.0 for NNI 3.0): a Lightning release that moves it breaks here."""

from __future__ import annotations

from typing import Any


def count_optimizer_step(trainer: Any) -> None:
    """Counts one optimizer step in ``trainer.global_step``, as a ``LightningOptimizer.step`` does
    under manual optimization. NNI's one-shot modules step the raw optimizers, so the global step
    stays 0 with NNI's strategies: ``ModelCheckpoint`` then saves nothing (it skips a step it has
    saved), ``max_steps`` never stops and ``log_every_n_steps`` logs every step."""
    loop = trainer.fit_loop.epoch_loop
    manual = getattr(loop, 'manual_optimization', None)  # Lightning 2.x
    if manual is None:
        manual = loop.batch_loop.manual_loop  # Lightning 1.9
    manual.optim_step_progress.increment_ready()
    manual.optim_step_progress.increment_completed()
