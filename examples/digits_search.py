"""A small ProxylessNAS search from a plain PyTorch script, run with NNI 2.10's mixed layers and
with proxyless_rs's, same seeds, side by side.

Data: scikit-learn's bundled 8x8 digits (1797 images, no download). The supernet has three
mixed layers of five candidates each and a mixed input choosing which hidden state feeds the
classifier. Each step does what NNI's one-shot loop does: an architecture step on a validation
batch (resample, forward, backward, Adam on alpha) and a weight step on a training batch
(resample, forward, backward, SGD on the weights; proxyless_rs skips the alpha-gradient work
there, which NNI computes and then discards).

    python examples/digits_search.py [--epochs 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits
from tqdm import tqdm

HIDDEN = 64


def quiet_known_warnings() -> None:
    """Silences, in these demos only, the warnings that NNI 2.10 and Lightning 1.9 print on every
    run with torch 2.13 and that say nothing about the search (README, "Warnings you will see").

    Each filter names the message, so any other warning still shows.
    """
    # NNI 2.10 registers torch.nn's classes at import and meets two that torch 2.13 added, which are
    # not modules; it concludes "your PyTorch version might not be supported".
    warnings.filterwarnings('ignore', message=r'.*It means your PyTorch version might not be supported',
                            category=RuntimeWarning)
    # Lightning 1.9 imports pkg_resources (setuptools deprecates it); NNI touches torch's
    # deprecated NLLLoss2d while registering torch.nn.
    warnings.filterwarnings('ignore', message=r'pkg_resources is deprecated', category=UserWarning)
    warnings.filterwarnings('ignore', message=r'`NLLLoss2d` has been deprecated', category=FutureWarning)
    # NNI's ProxylessMixedInput hooks its backward with a module full backward hook; its input is a
    # list, which to torch is no input requiring grad, so torch warns at every backward.
    warnings.filterwarnings('ignore', message=r'Full backward hook is firing when gradients are computed',
                            category=UserWarning)
    # Lightning's INFO lines at every Trainer ("GPU available: False, used: False", "`Trainer.fit`
    # stopped", ...): digits_nni.py builds five Trainers.
    logging.getLogger('pytorch_lightning.utilities.rank_zero').setLevel(logging.WARNING)
    logging.getLogger('pytorch_lightning.accelerators.cuda').setLevel(logging.WARNING)


quiet_known_warnings()

from proxyless_rs import no_arch_grad  # noqa: E402  (after the filters: it loads NNI's supermodule)


def candidates() -> list[tuple[str, nn.Module]]:
    return [
        ('relu', nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.ReLU())),
        ('tanh', nn.Sequential(nn.Linear(HIDDEN, HIDDEN), nn.Tanh())),
        ('bottleneck', nn.Sequential(nn.Linear(HIDDEN, 16), nn.ReLU(), nn.Linear(16, HIDDEN))),
        ('wide', nn.Sequential(nn.Linear(HIDDEN, 4 * HIDDEN), nn.ReLU(), nn.Linear(4 * HIDDEN, HIDDEN))),
        ('skip', nn.Identity()),
    ]


class DigitsSupernet(nn.Module):
    def __init__(self, layer_cls, input_cls, depth: int = 3):
        super().__init__()
        self.stem = nn.Linear(64, HIDDEN)
        self.layers = nn.ModuleList([
            layer_cls(candidates(), nn.Parameter(torch.randn(5) * 1e-3), nn.Softmax(-1), f'layer{i}')
            for i in range(depth)
        ])
        self.readout = input_cls(depth, 1, nn.Parameter(torch.randn(depth) * 1e-3), nn.Softmax(-1), 'readout')
        self.head = nn.Linear(HIDDEN, 10)

    def mixed(self):
        return [*self.layers, self.readout]

    def resample(self, memo: dict | None = None) -> dict:
        memo = dict(memo or {})
        for module in self.mixed():
            memo.update(module.resample(memo))
        return memo

    def export(self) -> dict:
        memo: dict = {}
        for module in self.mixed():
            memo.update(module.export(memo))
        return memo

    def arch_parameters(self):
        return [m._arch_alpha for m in self.mixed()]

    def weight_parameters(self):
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def forward(self, x):
        h = F.relu(self.stem(x))
        states = []
        for layer in self.layers:
            h = layer(h)
            states.append(h)
        return self.head(self.readout(states))


def digits(seed: int = 0):
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    n_train, n_val = 1000, 400
    return (x[:n_train], y[:n_train]), (x[n_train:n_train + n_val], y[n_train:n_train + n_val]), \
        (x[n_train + n_val:], y[n_train + n_val:])


def batches(x, y, size, generator):
    order = torch.randperm(len(x), generator=generator)
    for i in range(0, len(x) - size + 1, size):
        idx = order[i:i + size]
        yield x[idx], y[idx]


def paired_batches(train, val, size: int, generator):
    """One epoch of (training batch, validation batch) pairs, NNI's one-shot loop: the validation
    batches cycle while the training batches last."""
    (xt, yt), (xv, yv) = train, val
    val_iter = batches(xv, yv, size, generator)
    for xb, yb in batches(xt, yt, size, generator):
        try:
            xa, ya = next(val_iter)
        except StopIteration:
            val_iter = batches(xv, yv, size, generator)
            xa, ya = next(val_iter)
        yield (xb, yb), (xa, ya)


def accuracy(net: DigitsSupernet, arch: dict, xs, ys) -> float:
    """Test accuracy of the supernet with ``arch`` fixed (its weights as searched, no retraining)."""
    net.resample(arch)
    with torch.no_grad():
        return (net(xs).argmax(-1) == ys).float().mean().item()


def search(layer_cls, input_cls, epochs: int, batch: int = 32, seed: int = 0, desc: str = '', progress=True):
    """Runs the search; returns (exported architecture, test accuracy, seconds, sampled archs)."""
    (xt, yt), (xv, yv), (xs, ys) = digits(seed)
    torch.manual_seed(seed)
    net = DigitsSupernet(layer_cls, input_cls)
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=0.05, momentum=0.9)
    a_opt = torch.optim.Adam(net.arch_parameters(), lr=3e-2, betas=(0.5, 0.999))
    loader_gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = len(xt) // batch
    sampled = []
    start = time.perf_counter()
    with tqdm(total=epochs * steps_per_epoch, desc=desc, disable=not progress, leave=True) as bar:
        for _ in range(epochs):
            for (xb, yb), (xa, ya) in paired_batches((xt, yt), (xv, yv), batch, loader_gen):
                # Architecture step on a validation batch.
                sampled.append(net.resample())
                a_opt.zero_grad()
                F.cross_entropy(net(xa), ya).backward()
                a_opt.step()
                # Weight step on a training batch. Its alpha gradients would be discarded by the next
                # a_opt.zero_grad(), so proxyless_rs's layers skip that work here (no_arch_grad is a
                # no-op on NNI's layers, which always do it).
                net.resample()
                w_opt.zero_grad()
                with no_arch_grad(net):
                    loss = F.cross_entropy(net(xb), yb)
                    loss.backward()
                w_opt.step()
                bar.update()
                if bar.n % 25 == 0:
                    bar.set_postfix(loss=f'{loss.item():.3f}', refresh=False)
    seconds = time.perf_counter() - start
    arch = net.export()
    return arch, accuracy(net, arch, xs, ys), seconds, sampled


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--epochs', type=int, default=15)
    parser.add_argument('--threads', type=int, default=1, help='torch.set_num_threads (1 = overhead-bound, like CI)')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from nni.nas.oneshot.pytorch.supermodule.proxyless import (
        ProxylessMixedInput as NNIInput,
        ProxylessMixedLayer as NNILayer,
    )

    import proxyless_rs

    for warm_up in ((NNILayer, NNIInput), (proxyless_rs.ProxylessMixedLayer, proxyless_rs.ProxylessMixedInput)):
        search(*warm_up, epochs=1, progress=False)  # first-use costs out of the timed runs
    runs = {
        'NNI 2.10 (Python)': search(NNILayer, NNIInput, args.epochs, seed=args.seed, desc="NNI 2.10   "),
        'proxyless_rs (Rust)': search(proxyless_rs.ProxylessMixedLayer, proxyless_rs.ProxylessMixedInput,
                                      args.epochs, seed=args.seed, desc='proxyless_rs'),
    }
    print()
    print(f'{"implementation":<22} {"search time":>12} {"test accuracy":>14}  architecture')
    for name, (arch, accuracy, seconds, _) in runs.items():
        print(f'{name:<22} {seconds:>11.2f}s {accuracy:>14.3f}  {arch}')
    (_, _, t_nni, s_nni), (_, _, t_rs, s_rs) = runs.values()
    same = sum(a == b for a, b in zip(s_nni, s_rs))
    print(f'\nspeed-up: {t_nni / t_rs:.2f}x; identical sampled architectures at {same} of {len(s_nni)} steps')


if __name__ == '__main__':
    main()
