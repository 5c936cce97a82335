"""The digits search through NNI 3.0's workflow: a ``ModelSpace`` with ``LayerChoice``, ``InputChoice``
and a ``Repeat`` (a depth choice), a Lightning ``Classification`` evaluator and ``NasExperiment``, with
NNI 3.0's ``nni.nas.strategy.Proxyless()`` and with ``proxyless_rs.strategy.Proxyless()``. Run it in
an NNI 3.0 environment (``make demo-nni3`` builds one from requirements-nni3.txt).

    python examples/digits_nni3.py [--epochs 6] [--repeats 3] [--warmup-epochs 2]

The searches alternate (NNI 3.0's, ours, NNI 3.0's, ...) under the same seeds, so that drift of the
machine hits both alike; the speed-up is the median of the paired ratios. Prints each strategy's
search time, the test accuracy of its exported architecture (the supernet with that architecture, no
retraining) and the architecture.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(__file__))
from digits_search import HIDDEN, digits, quiet_known_warnings  # noqa: E402

quiet_known_warnings()
# NNI 3.0's experiment logs its set-up and tear-down (REST server off, checkpoint saved, ...) at every
# search; its one-shot strategies run in this process whatever the training service says.
logging.getLogger('nni').setLevel(logging.ERROR)
warnings.filterwarnings('ignore', message=r'.*`training_service` will be ignored', category=UserWarning)

import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from nni.nas.evaluator.pytorch import Classification, DataLoader  # noqa: E402
from nni.nas.experiment import NasExperiment  # noqa: E402
from nni.nas.nn.pytorch import InputChoice, LayerChoice, ModelSpace, Repeat  # noqa: E402
from nni.nas.strategy import Proxyless as NNIProxyless  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

import proxyless_rs  # noqa: E402


def block(i: int) -> LayerChoice:
    return LayerChoice({
        'relu': nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.ReLU()),
        'tanh': nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.Tanh()),
        'bottleneck': nn.Sequential(nn.Linear(HIDDEN, 16), nn.ReLU(), nn.Linear(16, HIDDEN)),
        'wide': nn.Sequential(nn.Linear(HIDDEN, 4 * HIDDEN), nn.ReLU(), nn.Linear(4 * HIDDEN, HIDDEN)),
        'skip': nn.Identity(),
    }, label=f'layer{i}')


class DigitsSpace(ModelSpace):
    """Two mixed layers of five candidates, then 1 to 3 residual blocks (a depth choice), and a mixed
    input choosing what feeds the classifier (0: the mixed layers' output, 1: the blocks')."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(64, HIDDEN)
        self.layer0, self.layer1 = block(0), block(1)
        self.blocks = Repeat(lambda i: nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.ReLU()), (1, 3), label='depth')
        self.readout = InputChoice(2, 1, label='readout')
        self.head = nn.Linear(HIDDEN, 10)

    def forward(self, x):
        h = self.layer1(self.layer0(F.relu(self.stem(x))))
        return self.head(self.readout([h, self.blocks(h)]))


def search(strategy, epochs: int, seed: int = 0):
    """One search through NasExperiment: (architecture, test accuracy, seconds)."""
    (xt, yt), (xv, yv), (xs, ys) = digits(seed)
    torch.manual_seed(seed)
    evaluator = Classification(
        train_dataloaders=DataLoader(TensorDataset(xt, yt), batch_size=32, shuffle=True),
        val_dataloaders=DataLoader(TensorDataset(xv, yv), batch_size=32, shuffle=True),
        learning_rate=3e-3, max_epochs=epochs, enable_progress_bar=False, logger=False,
        enable_checkpointing=False, enable_model_summary=False, num_classes=10)
    experiment = NasExperiment(DigitsSpace(), evaluator, strategy)
    start = time.perf_counter()
    experiment.run()
    seconds = time.perf_counter() - start
    experiment.stop()
    (model,) = strategy.list_models()
    architecture = model.sample
    supernet = strategy.oneshot_module
    _fix(supernet, architecture)
    supernet.eval()
    with torch.no_grad():
        accuracy = (supernet.training_module.model(xs).argmax(-1) == ys).float().mean().item()
    return architecture, accuracy, seconds


def _fix(oneshot_module, architecture: dict) -> None:
    """Sets every supernet module to the exported architecture (resample from a full memo)."""
    memo = dict(architecture)
    for module in oneshot_module.supernet_modules():
        module.resample(memo)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--epochs', type=int, default=6)
    parser.add_argument('--repeats', type=int, default=3, help='timed searches per strategy (alternating)')
    parser.add_argument('--warmup-epochs', type=int, default=2,
                        help="weight-only epochs first (NNI 3.0's warmup_epochs)")
    parser.add_argument('--arc-lr', type=float, default=1e-2)
    parser.add_argument('--threads', type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    # The same keyword arguments for both: the strategies are drop-ins for each other.
    kwargs = dict(arc_learning_rate=args.arc_lr, warmup_epochs=args.warmup_epochs)
    strategies = {'NNI 3.0 nni.nas.strategy.Proxyless()': NNIProxyless,
                  'proxyless_rs.strategy.Proxyless()': proxyless_rs.strategy.Proxyless}
    for cls in strategies.values():  # first-use costs (Lightning, NNI, torch) before the timed runs
        search(cls(**kwargs), 1)
    results: dict[str, list] = {name: [] for name in strategies}
    for _ in range(args.repeats):
        for name, cls in strategies.items():
            results[name].append(search(cls(**kwargs), args.epochs))

    print(f'\ndigits, {args.epochs} epochs ({args.warmup_epochs} warm-up), arc_learning_rate {args.arc_lr:g}; '
          f'median of {args.repeats} alternating searches each, same seed:')
    print(f'{"strategy":<40} {"search time":>12} {"test accuracy":>14}  exported architecture')
    for name, runs in results.items():
        arch, accuracy, _ = runs[0]
        seconds = statistics.median(r[2] for r in runs)
        print(f'{name:<40} {seconds:>11.2f}s {accuracy:>14.3f}  {arch}')
    nni_runs, our_runs = results.values()
    ratio = statistics.median(a[2] / b[2] for a, b in zip(nni_runs, our_runs))
    print(f'\nspeed-up of the whole search: {ratio:.2f}x (median of paired ratios; '
          f'{", ".join(f"{a[2] / b[2]:.2f}x" for a, b in zip(nni_runs, our_runs))})')


if __name__ == '__main__':
    main()
