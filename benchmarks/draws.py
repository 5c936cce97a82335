"""What a draw costs: ``resample`` of the overhead case's 20 mixed layers (7 ``Linear(64)`` each),
beside NNI's own draw (softmax, ``torch.multinomial``, ``.item()``) and the device's unit costs.

A draw has to bring its index to the host (Python picks the path), so on a GPU it waits for its
kernels: the softmax of alpha (on the host the softmax is kept while alpha is unchanged; on a
device, telling whether alpha changed is itself a round trip) and the exponential draw on the
default CUDA generator (what reproduces ``torch.multinomial`` under NNI's seeds), written into one
buffer, and for the read back of that buffer, whose quotients' argmax is taken on the host.
This prints the cost of a layer's ``resample`` next to one kernel launch and one ``.item()``, so
the draws' part of a step can be read off.

    python benchmarks/draws.py [--device cuda] [--repeats 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn

import proxyless_rs

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (benchmarks/run.py: the device and the timing loop)

LAYERS, CANDIDATES, DIM = 20, 7, 64


def median_us(fn: Callable[[], object], repeats: int) -> float:
    """The median over 5 rounds of the mean time of ``repeats`` calls, after 20 warm-up calls."""
    for _ in range(20):
        fn()
    return statistics.median(run.per_call_us(fn, repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cpu', help="'cpu' (default) or 'cuda'")
    parser.add_argument('--repeats', type=int, default=200)
    args = parser.parse_args()
    device = run.DEVICE = torch.device(args.device)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    layers = [proxyless_rs.ProxylessMixedLayer([(f'op{i}', nn.Linear(DIM, DIM)) for i in range(CANDIDATES)],
                                               nn.Parameter(torch.randn(CANDIDATES) * 1e-3), nn.Softmax(-1),
                                               f'layer{j}').to(device) for j in range(LAYERS)]
    x = torch.randn(8, DIM, device=device)
    alpha = layers[0]._arch_alpha.detach()

    def resample_all() -> None:
        for layer in layers:
            layer.resample({})

    def nni_draw() -> int:  # NNI 2.10's ProxylessMixedLayer.resample, less its dict
        return int(torch.multinomial(torch.softmax(alpha, -1), 1).item())

    ours = median_us(resample_all, args.repeats)
    where = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'
    print(f'device: {where}, torch {torch.__version__}')
    print(f'resample of {LAYERS} layers ({CANDIDATES} candidates each): {ours:.1f} us, '
          f'{ours / LAYERS:.1f} us a layer')
    print(f"NNI's draw of one layer (softmax, multinomial, item): {median_us(nni_draw, args.repeats):.1f} us")
    print(f'one kernel launch (x.add(1)): {median_us(lambda: x.add(1), args.repeats):.1f} us; '
          f'.item() of an element: {median_us(lambda: x[0, 0].item(), args.repeats):.1f} us')


if __name__ == '__main__':
    main()
