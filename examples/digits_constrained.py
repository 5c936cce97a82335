"""A ProxylessNAS search under a hard latency limit, from a plain PyTorch script.

The digits supernet of ``digits_search.py`` (three mixed layers of five candidates and a mixed
input), searched twice with proxyless_rs's layers, same seeds:

1. without any latency term: the plain export, and ``constrained_export`` at the limit applied
   only after the search;
2. with ``latency_limit`` set below the first search's exported latency: the architecture step's
   loss is ``cross_entropy + limit_penalty(E[LAT], limit)`` (zero at or below the limit), and the
   architecture is ``constrained_export(model, table, limit)``, the most probable one within it.

Latencies are a fixed table shipped here (``TABLE_MS``): medians of ``profile_latency`` on a
2-core AMD EPYC machine, batch 32, one thread, three runs agreeing within 3%. Timing noise would
otherwise change the limit and the search from one run to the next; ``--profile`` measures this
machine instead. Prints a table and saves the expected latency over both searches against the
limit to ``digits_latency_limit.png`` in the current folder (the docs' figure:
``--plot docs/digits_latency_limit.png``).

    python examples/digits_constrained.py [--epochs 15] [--limit-fraction 0.6] [--profile] [--plot PATH]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from digits_search import DigitsSupernet, accuracy, digits, paired_batches, quiet_known_warnings

quiet_known_warnings()

import proxyless_rs  # noqa: E402  (after the filters: it loads NNI's supermodule)
from proxyless_rs import (  # noqa: E402
    LatencyTable,
    constrained_export,
    expected_latency,
    limit_penalty,
    no_arch_grad,
    predicted_latency,
)

# ms per batch of 32 on this machine (see the docstring): the MLP candidates of digits_search.py.
ROW = {'relu': 0.0101, 'tanh': 0.0140, 'bottleneck': 0.0127, 'wide': 0.0322, 'skip': 0.0012}
TABLE_MS = {**{f'layer{i}': dict(ROW) for i in range(3)}, 'readout': {'0': 0.0005, '1': 0.0005, '2': 0.0005}}


def search(table: LatencyTable, epochs: int, limit: float | None, penalty: float, seed: int = 0, batch: int = 32):
    """digits_search.search's loop with the latency limit in the architecture step; returns the
    supernet, the expected latency after every architecture step and the seconds taken."""
    (xt, yt), (xv, yv), _ = digits(seed)
    torch.manual_seed(seed)
    net = DigitsSupernet(proxyless_rs.ProxylessMixedLayer, proxyless_rs.ProxylessMixedInput)
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=0.05, momentum=0.9)
    a_opt = torch.optim.Adam(net.arch_parameters(), lr=3e-2, betas=(0.5, 0.999))
    loader_gen = torch.Generator().manual_seed(seed)
    trace = []
    start = time.perf_counter()
    for _ in range(epochs):
        for (xb, yb), (xa, ya) in paired_batches((xt, yt), (xv, yv), batch, loader_gen):
            # Architecture step: the task loss, plus the penalty while E[LAT] is above the limit.
            net.resample()
            a_opt.zero_grad()
            loss = F.cross_entropy(net(xa), ya)
            expected = expected_latency(net, table)
            if limit is not None:
                loss = loss + limit_penalty(expected, limit, penalty)
            loss.backward()
            a_opt.step()
            trace.append(expected.item())
            # Weight step.
            net.resample()
            w_opt.zero_grad()
            with no_arch_grad(net):
                F.cross_entropy(net(xb), yb).backward()
            w_opt.step()
    return net, trace, time.perf_counter() - start


def test_accuracy(net: DigitsSupernet, arch: dict, seed: int = 0) -> float:
    """Test accuracy of the supernet with ``arch`` fixed (no retraining), as in digits_search.py."""
    _, _, (xs, ys) = digits(seed)
    return accuracy(net, arch, xs, ys)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--epochs', type=int, default=15)
    parser.add_argument('--limit-fraction', type=float, default=0.6,
                        help="the limit, as a fraction of the unconstrained search's exported latency")
    parser.add_argument('--penalty', type=float, default=5.0, help='limit_penalty weight during the search')
    parser.add_argument('--profile', action='store_true', help='measure the latency table on this machine')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--plot', default='digits_latency_limit.png', help='where to write the plot')
    args = parser.parse_args()
    torch.set_num_threads(1)

    if args.profile:
        (xt, _), _, _ = digits(args.seed)
        probe = DigitsSupernet(proxyless_rs.ProxylessMixedLayer, proxyless_rs.ProxylessMixedInput)
        table = proxyless_rs.profile_latency(probe, xt[:32], repeats=200, warmup=20)
    else:
        table = LatencyTable(TABLE_MS)

    free, free_trace, free_s = search(table, args.epochs, None, args.penalty, args.seed)
    free_arch = free.export()
    free_ms = predicted_latency(free_arch, free, table)
    limit = args.limit_fraction * free_ms
    limited, limited_trace, limited_s = search(table, args.epochs, limit, args.penalty, args.seed)
    rows = [
        ('no latency term, export()', free_arch, free, free_s),
        ('no latency term, constrained_export', constrained_export(free, table, limit), free, free_s),
        ('latency_limit, constrained_export', constrained_export(limited, table, limit), limited, limited_s),
    ]

    print(f'\nlatency limit: {limit * 1e3:.2f} us ({args.limit_fraction:g} x the unconstrained export\'s '
          f'{free_ms * 1e3:.2f} us); latency table: {"profiled here" if args.profile else "fixed (TABLE_MS)"}')
    print(f'{"search, export":<38} {"time":>6} {"latency us":>11} {"<= limit":>9} {"test acc":>9}  architecture')
    for name, arch, net, seconds in rows:
        ms = predicted_latency(arch, net, table)
        acc = test_accuracy(net, arch, args.seed)
        print(f'{name:<38} {seconds:>5.2f}s {ms * 1e3:>11.2f} {str(ms <= limit):>9} {acc:>9.3f}  {arch}')

    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot([v * 1e3 for v in free_trace], label='search without a latency term', lw=1.2)
    ax.plot([v * 1e3 for v in limited_trace], label=f'search with latency_limit (penalty {args.penalty:g})', lw=1.2)
    ax.axhline(limit * 1e3, color='k', ls='--', lw=1, label=f'limit {limit * 1e3:.1f} us')
    ax.set_xlabel('architecture step')
    ax.set_ylabel('expected latency E[LAT] (us)')
    ax.set_title('digits supernet: expected latency over the search')
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot, dpi=120)
    print(f'plot: {args.plot}')


if __name__ == '__main__':
    main()
