"""After the search: the child network, retrained, fine-tuned and deployed.

The digits search of ``digits_constrained.py`` (its supernet, its latency table, proxyless_rs's
layers), then what the paper's users do with the architecture it finds:

1. ``constrained_export(net, table, limit)``: the most probable architecture within a latency
   limit. By default the search itself has no latency term (``--penalty`` adds
   ``limit_penalty``): on digits, with one, every layer ends as a skip (docs/hardware-aware.md), a
   child too small to show the rest;
2. ``proxyless_rs.freeze(net, arch)``: the child network, a plain ``nn.Module`` of the chosen
   candidates with the supernet's weights (no architecture parameters, no hooks);
3. the child fine-tuned from those weights, and the same child retrained from freshly
   initialised weights, the same epochs, optimizer and batches for both; each one's test
   accuracy beside the supernet's with the architecture fixed (no retraining);
4. deployment: the fine-tuned child saved as TorchScript (``torch.jit.script``) and, where onnx
   and onnxruntime are installed, as ONNX; each file loaded back (``torch.jit.load``, an
   onnxruntime session) and checked against the child on the test set;
5. the deployed child's measured latency (batch 32, one thread, median of repeated runs) beside
   what the latency table predicts for the architecture: its chosen candidates timed one by one
   (what the table covers), and its whole forward (stem and head included, which the table
   leaves out).

    python examples/digits_retrain.py [--epochs 15] [--retrain-epochs 20] [--limit MS | --no-limit]
                                      [--deploy digits_child]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from pathlib import Path

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


def deploy(child: nn.Module, x: torch.Tensor, stem: str) -> list[tuple[str, str, float, float]]:
    """The child saved as TorchScript (and ONNX where onnx and onnxruntime are installed), each file
    loaded back and run on ``x``: (format, path, KiB, largest difference from the child's output)."""
    with torch.no_grad():
        expected = child(x)
    files = []
    scripted = f'{stem}.pt'
    torch.jit.script(child).save(scripted)
    with torch.no_grad():
        got = torch.jit.load(scripted)(x)
    files.append(('TorchScript', scripted, got))
    try:
        import onnxruntime
    except ImportError:
        pass
    else:
        exported = f'{stem}.onnx'
        kwargs = {'dynamo': False} if tuple(map(int, torch.__version__.split('.')[:2])) >= (2, 5) else {}
        with warnings.catch_warnings():  # torch 2.9+ calls the TorchScript-based exporter legacy
            warnings.simplefilter('ignore', DeprecationWarning)
            torch.onnx.export(child, (x[:1],), exported, input_names=['x'], output_names=['y'],
                              dynamic_axes={'x': {0: 'batch'}, 'y': {0: 'batch'}}, **kwargs)
        session = onnxruntime.InferenceSession(exported, providers=['CPUExecutionProvider'])
        (out,) = session.run(None, {'x': x.numpy()})
        files.append(('ONNX (onnxruntime)', exported, torch.from_numpy(out)))
    return [(kind, path, Path(path).stat().st_size / 1024, (got - expected).abs().max().item())
            for kind, path, got in files]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--epochs', type=int, default=15, help='search epochs')
    parser.add_argument('--retrain-epochs', type=int, default=20, help='epochs of fine-tuning and of retraining')
    parser.add_argument('--limit', type=float, default=0.02,
                        help='the latency limit (ms per batch of 32) of the search and the export (default: 0.02)')
    parser.add_argument('--no-limit', action='store_true', help='search and export without a latency limit')
    parser.add_argument('--penalty', type=float, default=0.0,
                        help='weight of the limit penalty in the search (default 0: no latency term)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--deploy', default='digits_child',
                        help='where the deployed child goes: this path with .pt (TorchScript) and .onnx')
    args = parser.parse_args()
    torch.set_num_threads(1)
    limit = None if args.no_limit else args.limit

    table = LatencyTable(TABLE_MS)
    net, _, seconds = search(table, args.epochs, limit if args.penalty > 0 else None, args.penalty, seed=args.seed)
    arch = net.export() if limit is None else constrained_export(net, table, limit)
    supernet_acc = test_accuracy(net, arch, args.seed)

    child = proxyless_rs.freeze(net, arch).eval()
    assert not any(type(m).__module__.startswith('proxyless_rs.nni') for m in child.modules())
    fine_tuned_child = proxyless_rs.freeze(net, arch)
    fine_tuned = train(fine_tuned_child, args.retrain_epochs, args.seed)
    from_scratch = train(reinitialised(proxyless_rs.freeze(net, arch), args.seed), args.retrain_epochs, args.seed)
    _, _, (xs, ys) = digits(args.seed)
    deployed = deploy(fine_tuned_child, xs, args.deploy)
    loaded = torch.jit.load(f'{args.deploy}.pt')
    with torch.no_grad():
        deployed_acc = (loaded(xs).argmax(-1) == ys).float().mean().item()
    parts_ms, _ = measured_latency(fine_tuned_child, xs[:32])
    whole_ms = median_ms(lambda: loaded(xs[:32]))

    term = 'no latency term' if limit is None or args.penalty == 0 else f'limit penalty {args.penalty:g}'
    within = 'no latency limit' if limit is None else f'the most probable within {limit} ms'
    print(f'search: {args.epochs} epochs in {seconds:.2f}s, {term}; export: {within}')
    print(f'architecture: {arch}')
    print(f'child: {sum(p.numel() for p in child.parameters())} parameters, '
          f'{len(list(child.modules()))} modules, none of proxyless_rs\'s layers')
    print()
    print(f'{"network":<44} {"test accuracy":>13}')
    print(f'{"supernet, architecture fixed (no retraining)":<44} {supernet_acc:>13.3f}')
    print(f'{"child fine-tuned from the supernet":<44} {fine_tuned:>13.3f}')
    print(f'{"child retrained from scratch":<44} {from_scratch:>13.3f}')
    print(f'{"fine-tuned child, deployed (TorchScript)":<44} {deployed_acc:>13.3f}')
    print(f'({args.retrain_epochs} epochs each, the same optimizer and batches)')
    print()
    print(f'{"deployed as":<20} {"file":<24} {"KiB":>6}  largest difference from the child on the test set')
    for kind, path, kib, diff in deployed:
        print(f'{kind:<20} {path:<24} {kib:>6.1f}  {diff:.1e}')
    print()
    print('latency, batch 32, one thread                ms')
    print(f'table prediction                       {predicted_latency(arch, net, table):>8.4f}'
          + ('' if limit is None else f'   (limit {limit})'))
    print(f'chosen candidates, measured            {parts_ms:>8.4f}   (what the table covers)')
    print(f'deployed TorchScript child, measured   {whole_ms:>8.4f}   (stem and head included)')
    if limit is not None and parts_ms > limit:
        print(f'(the limit holds for the table, which digits_constrained.py ships: medians measured once on another '
              f'run of this kind of host; the same candidates timed here and now take '
              f'{parts_ms / predicted_latency(arch, net, table):.2g}x its figures: timings on a shared 2-core host '
              'vary that much from run to run. Measure the table on the deployment host: profile_latency)')


if __name__ == '__main__':
    main()
