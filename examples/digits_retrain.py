"""After the search: the child network, retrained from scratch and fine-tuned from the supernet.

The digits search of ``digits_constrained.py`` (its supernet, its latency table, proxyless_rs's
layers), then what the paper's users do with the architecture it finds:

1. ``proxyless_rs.freeze(net)``: the child network, a plain ``nn.Module`` of the chosen
   candidates with the supernet's weights (no architecture parameters, no hooks);
2. the child fine-tuned from those weights, and the same child retrained from freshly
   initialised weights, the same epochs, optimizer and batches for both;
3. each one's test accuracy, beside the supernet's with the architecture fixed (no retraining);
4. the child's measured latency (batch 32, one thread, median of repeated runs) beside what the
   latency table predicts for the architecture: its chosen candidates timed one by one (what the
   table covers), and its whole forward (stem and head included, which the table leaves out).

    python examples/digits_retrain.py [--epochs 15] [--retrain-epochs 20] [--limit MS]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from digits_constrained import TABLE_MS, search, test_accuracy
from digits_search import batches, digits, quiet_known_warnings

quiet_known_warnings()

import proxyless_rs  # noqa: E402  (after the filters: it loads NNI's supermodule)
from proxyless_rs import LatencyTable, constrained_export, predicted_latency  # noqa: E402


def train(child: nn.Module, epochs: int, seed: int) -> float:
    """``epochs`` of SGD on the training set; returns the test accuracy."""
    (xt, yt), _, (xs, ys) = digits(seed)
    opt = torch.optim.SGD(child.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(seed)
    child.train()
    for _ in range(epochs):
        for xb, yb in batches(xt, yt, 32, generator):
            opt.zero_grad()
            F.cross_entropy(child(xb), yb).backward()
            opt.step()
    child.eval()
    with torch.no_grad():
        return (child(xs).argmax(-1) == ys).float().mean().item()


def reinitialised(child: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    for module in child.modules():
        if hasattr(module, 'reset_parameters'):
            module.reset_parameters()
    return child


def median_ms(fn, repeats: int = 300, warmup: int = 30) -> float:
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def measured_latency(child: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(the chosen candidates timed one by one on their real inputs, the whole forward), in ms."""
    inputs = {}
    hooks = [layer.register_forward_pre_hook(lambda m, args, i=i: inputs.__setitem__(i, args))
             for i, layer in enumerate(child.layers)]
    with torch.no_grad():
        child(x)
    for hook in hooks:
        hook.remove()
    parts = sum(median_ms(lambda layer=layer, args=inputs[i]: layer(*args)) for i, layer in enumerate(child.layers))
    return parts, median_ms(lambda: child(x))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--epochs', type=int, default=15, help='search epochs')
    parser.add_argument('--retrain-epochs', type=int, default=20, help='epochs of fine-tuning and of retraining')
    parser.add_argument('--limit', type=float, default=None,
                        help='a latency limit (ms) for the search and the export (default: none)')
    parser.add_argument('--penalty', type=float, default=5.0)
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    table = LatencyTable(TABLE_MS)
    net, _, seconds = search(table, args.epochs, args.limit, args.penalty, seed=args.seed)
    arch = net.export() if args.limit is None else constrained_export(net, table, args.limit)
    supernet_acc = test_accuracy(net, arch, args.seed)

    child = proxyless_rs.freeze(net, arch).eval()
    assert not any(type(m).__module__.startswith('proxyless_rs.nni') for m in child.modules())
    x = digits(args.seed)[0][0][:32]
    parts_ms, whole_ms = measured_latency(child, x)
    fine_tuned = train(proxyless_rs.freeze(net, arch), args.retrain_epochs, args.seed)
    from_scratch = train(reinitialised(proxyless_rs.freeze(net, arch), args.seed), args.retrain_epochs, args.seed)

    limit = 'no latency limit' if args.limit is None else f'a latency limit of {args.limit} ms'
    print(f'search: {args.epochs} epochs in {seconds:.2f}s, {limit}')
    print(f'architecture: {arch}')
    print(f'child: {sum(p.numel() for p in child.parameters())} parameters, '
          f'{len(list(child.modules()))} modules, none of proxyless_rs\'s layers')
    print()
    print(f'{"network":<44} {"test accuracy":>13}')
    print(f'{"supernet, architecture fixed (no retraining)":<44} {supernet_acc:>13.3f}')
    print(f'{"child fine-tuned from the supernet":<44} {fine_tuned:>13.3f}')
    print(f'{"child retrained from scratch":<44} {from_scratch:>13.3f}')
    print(f'({args.retrain_epochs} epochs each, the same optimizer and batches)')
    print()
    print(f'latency, batch 32, one thread     {"ms":>8}')
    print(f'table prediction                  {predicted_latency(arch, net, table):>8.4f}')
    print(f'chosen candidates, measured       {parts_ms:>8.4f}   (what the table covers)')
    print(f'whole child forward, measured     {whole_ms:>8.4f}   (stem and head included)')


if __name__ == '__main__':
    main()
