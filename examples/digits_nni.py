"""The digits search through NNI's one-shot workflow: a model space written with ``LayerChoice`` /
``InputChoice``, a Lightning ``Classification`` evaluator and ``RetiariiExperiment``, once with NNI
2.10's ``strategy.Proxyless()`` and once with ``proxyless_rs.strategy.Proxyless()``.

    python examples/digits_nni.py [--epochs 10] [--arc-lr 1e-2] [--plot digits_probs.png]

Prints the exported architectures, test accuracy of each and the time of each search, and plots
every layer's candidate probabilities over the proxyless_rs search.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import OrderedDict

import torch

sys.path.insert(0, os.path.dirname(__file__))
from digits_search import HIDDEN, DigitsSupernet, digits, quiet_known_warnings  # noqa: E402

quiet_known_warnings()  # before NNI and Lightning are imported: the warnings they print on every run

import nni.retiarii.nn.pytorch as nn  # noqa: E402
import nni.retiarii.strategy as nni_strategy  # noqa: E402
from nni.retiarii import model_wrapper  # noqa: E402
from nni.retiarii.evaluator.pytorch import Classification, DataLoader  # noqa: E402
from nni.retiarii.experiment.pytorch import RetiariiExeConfig, RetiariiExperiment  # noqa: E402
from pytorch_lightning.callbacks import Callback  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402


def block(i: int):
    """A mixed layer of named candidates: exports and logged probabilities use these names."""
    return nn.LayerChoice(OrderedDict([
        ('relu', nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.ReLU())),
        ('tanh', nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.Tanh())),
        ('bottleneck', nn.Sequential(nn.Linear(HIDDEN, 16), nn.ReLU(), nn.Linear(16, HIDDEN))),
        ('wide', nn.Sequential(nn.Linear(HIDDEN, 4 * HIDDEN), nn.ReLU(), nn.Linear(4 * HIDDEN, HIDDEN))),
        ('skip', nn.Identity()),
    ]), label=f'layer{i}')


@model_wrapper
class DigitsSpace(nn.Module):
    """Three mixed layers of five candidates (relu, tanh, bottleneck, wide, skip) and a mixed input
    choosing which hidden state feeds the classifier (0: layer0's output, 1: layer1's, 2: layer2's)."""

    def __init__(self, depth: int = 3):
        super().__init__()
        self.stem = nn.Linear(64, HIDDEN)
        self.layers = nn.ModuleList([block(i) for i in range(depth)])
        self.readout = nn.InputChoice(depth, 1, label='readout')
        self.head = nn.Linear(HIDDEN, 10)

    forward = DigitsSupernet.forward  # the same network as the plain-PyTorch demo's


def digits_datasets(seed: int = 0):
    (xt, yt), (xv, yv), test = digits(seed)
    return TensorDataset(xt, yt), TensorDataset(xv, yv), test


class ProbabilityRecorder(Callback):
    """Records every candidate probability after each training batch."""

    def __init__(self):
        self.history: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.history.append(dict(pl_module.export_probs()))


def search(strategy, epochs: int, seed: int = 0, progress: bool = True, callbacks=(), **trainer_kwargs):
    """One search through RetiariiExperiment; returns (architecture, test accuracy, seconds, experiment)."""
    train, val, (xs, ys) = digits_datasets(seed)
    torch.manual_seed(seed)
    space = DigitsSpace()
    evaluator = Classification(
        train_dataloaders=DataLoader(train, batch_size=32, shuffle=True),
        val_dataloaders=DataLoader(val, batch_size=32, shuffle=True),
        learning_rate=3e-3, max_epochs=epochs, enable_progress_bar=progress, logger=False,
        enable_checkpointing=False, enable_model_summary=False, callbacks=list(callbacks), **trainer_kwargs)
    experiment = RetiariiExperiment(space, evaluator, [], strategy)
    config = RetiariiExeConfig()
    config.execution_engine = 'oneshot'
    start = time.perf_counter()
    experiment.run(config)
    seconds = time.perf_counter() - start
    (architecture,) = experiment.export_top_models()
    module = strategy.model
    module.resample(dict(architecture))
    module.eval()
    with torch.no_grad():
        accuracy = (module(xs).argmax(-1) == ys).float().mean().item()
    return architecture, accuracy, seconds, experiment


def legend_name(label: str, choice: str) -> str:
    """A candidate's name for the plot: the layers' candidates are named; the readout's choices
    are input indices, named after the layer whose output each one is."""
    return f'layer{choice} output' if label == 'readout' else choice


def plot(history: list[dict[str, float]], path: str) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    labels = sorted({key.split('/')[0] for key in history[0]})
    fig, axes = plt.subplots(1, len(labels), figsize=(4 * len(labels), 3.2), sharey=True)
    for ax, label in zip(axes, labels):
        for key in [k for k in history[0] if k.split('/')[0] == label]:
            ax.plot([h[key] for h in history], label=legend_name(label, key.split('/', 1)[1]))
        ax.set_title(label)
        ax.set_xlabel('step')
        ax.legend(fontsize=7, title='candidate', title_fontsize=7)
    axes[0].set_ylabel('probability')
    fig.suptitle('candidate probabilities during the proxyless_rs search (digits)')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--epochs', type=int, default=10)
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--arc-lr', type=float, default=1e-2, help='architecture learning rate (NNI default 3e-4)')
    parser.add_argument('--plot', default='digits_probs.png', help='where to write the probability plot')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import proxyless_rs

    # Warm-up (first-use costs of Lightning, NNI and torch), so that the timed searches compare steps.
    for warm_up in (nni_strategy.Proxyless(), proxyless_rs.strategy.Proxyless()):
        search(warm_up, 1, progress=False, limit_train_batches=2)
    recorder = ProbabilityRecorder()
    # The same keyword arguments for all: the strategies are drop-ins for each other. (NNI 2.10
    # accepts arc_learning_rate but always uses 3e-4; proxyless_rs honours it.)
    kwargs = dict(arc_learning_rate=args.arc_lr)
    runs = {
        'NNI 2.10 strategy.Proxyless()': search(nni_strategy.Proxyless(**kwargs), args.epochs),
        'proxyless_rs.strategy.Proxyless()': search(proxyless_rs.strategy.Proxyless(**kwargs), args.epochs,
                                                    callbacks=[recorder]),
        "  ... (mode='two')": search(proxyless_rs.strategy.Proxyless(mode='two', **kwargs), args.epochs),
    }
    print()
    print(f'{"strategy":<36} {"search time":>12} {"test accuracy":>14}  exported architecture')
    for name, (arch, accuracy, seconds, _) in runs.items():
        print(f'{name:<36} {seconds:>11.2f}s {accuracy:>14.3f}  {arch}')
    (_, _, t_nni, _), (_, _, t_rs, _), _ = runs.values()
    print(f'\nspeed-up of the whole search (full mode): {t_nni / t_rs:.2f}x. NNI 2.10 ignores arc_learning_rate '
          f'(fixed 3e-4); proxyless_rs uses {args.arc_lr:g}.')
    plot(recorder.history, args.plot)
    print(f'candidate probabilities over the search: {args.plot}')


if __name__ == '__main__':
    main()
