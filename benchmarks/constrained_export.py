"""Time of the exact constrained export (proxyless_rs.constrained_export) on 30 mixed layers of 10
candidates, with one limited cost and with three, over random alphas, random tables and limits
from tight to loose.

Alphas are drawn as after a search (normal, std 1.5); each cost of each candidate uniform in
[0, 10), independently (the hard case: in real tables latency, FLOPs and parameters are
correlated). A limit at tightness t is ``least + t * (unconstrained - least)`` for each cost, where
``least`` is the smallest achievable value of that cost alone and ``unconstrained`` the plain
export's; t = 0 is often infeasible with three costs at once (refused, which the search also has to
prove). Prints the median and worst time of the whole call and the search nodes of the core.

    python benchmarks/constrained_export.py [--seeds 20] [--layers 30] [--candidates 10]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn as nn

from proxyless_rs import CostTable, ProxylessMixedLayer, constrained_export, predicted_costs


def space(layers: int, candidates: int, generator: torch.Generator) -> nn.Module:
    return nn.ModuleList([
        ProxylessMixedLayer([(f'op{i}', nn.Identity()) for i in range(candidates)],
                            nn.Parameter(torch.randn(candidates, generator=generator) * 1.5), nn.Softmax(-1), f'l{j}')
        for j in range(layers)
    ])


def table(model: nn.Module, costs: list[str], generator: torch.Generator) -> CostTable:
    return CostTable({cost: {layer.label: {name: float(torch.rand((), generator=generator)) * 10
                                           for name in layer.op_names} for layer in model} for cost in costs})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--seeds', type=int, default=20)
    parser.add_argument('--layers', type=int, default=30)
    parser.add_argument('--candidates', type=int, default=10)
    args = parser.parse_args()
    print(f'{args.layers} layers x {args.candidates} candidates, {args.seeds} seeds per row')
    print(f'{"costs":>5} {"tightness":>9} {"solved":>7} {"refused":>7} {"median ms":>10} {"worst ms":>9} '
          f'{"median nodes":>13} {"worst nodes":>12}')
    for n_costs in (1, 3):
        costs = ['latency', 'params', 'flops'][:n_costs]
        for tightness in (0.0, 0.25, 0.5, 0.75, 0.9):
            times, nodes, refused = [], [], 0
            for seed in range(args.seeds):
                generator = torch.Generator().manual_seed(seed)
                model = space(args.layers, args.candidates, generator)
                costs_table = table(model, costs, generator)
                plain = {layer.label: layer.export({})[layer.label] for layer in model}
                unconstrained = predicted_costs(plain, model, costs_table)
                least = {c: sum(min(row.values()) for row in costs_table[c].values()) for c in costs}
                limits = {c: least[c] + tightness * (unconstrained[c] - least[c]) for c in costs}
                start = time.perf_counter()
                try:
                    _, info = constrained_export(model, costs_table, limits, return_info=True)
                    nodes.append(info['nodes'])
                except ValueError:
                    refused += 1
                times.append((time.perf_counter() - start) * 1e3)
            print(f'{n_costs:>5} {tightness:>9} {len(nodes):>7} {refused:>7} {statistics.median(times):>10.2f} '
                  f'{max(times):>9.2f} {statistics.median(nodes) if nodes else 0:>13.0f} {max(nodes, default=0):>12}')


if __name__ == '__main__':
    main()
