"""Supernets for the benchmark cases, built from either implementation's mixed-layer classes."""

from __future__ import annotations

import torch
import torch.nn as nn


class MixedChain(nn.Module):
    """``depth`` mixed layers in a row, each over ``n`` Linear(dim) candidates, ``act`` (tanh) in between."""

    def __init__(self, layer_cls, input_cls, depth: int, n: int, dim: int, act=torch.tanh):
        super().__init__()
        self.act = act
        self.layers = nn.ModuleList([
            layer_cls([(f'op{k}', nn.Linear(dim, dim)) for k in range(n)],
                      nn.Parameter(torch.randn(n) * 1e-3), nn.Softmax(-1), f'layer{i}')
            for i in range(depth)
        ])

    def mixed(self):
        return list(self.layers)

    def forward(self, x):
        for layer in self.layers:
            x = self.act(layer(x))
        return x


class InvertedResidual(nn.Module):
    """MobileNetV2's inverted bottleneck: 1x1 expand, kxk depthwise, 1x1 project."""

    def __init__(self, channels: int, kernel: int, expansion: int):
        super().__init__()
        hidden = channels * expansion
        self.block = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, kernel, padding=kernel // 2, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels),
        )

    def forward(self, x):
        return self.block(x)


class Zero(nn.Module):
    """The 'zero' candidate (the block is skipped; the residual carries the input), as in DARTS."""

    def forward(self, x):
        return x.mul(0.0)


def mobilenet_candidates(channels: int) -> list[tuple[str, nn.Module]]:
    ops = [(f'k{k}_e{e}', InvertedResidual(channels, k, e)) for k in (3, 5, 7) for e in (3, 6)]
    return ops + [('identity', nn.Identity()), ('zero', Zero())]


class ConvSupernet(nn.Module):
    """A ProxylessNAS-style supernet: residual blocks whose body is a mixed layer of (up to) 8 candidates."""

    def __init__(self, layer_cls, input_cls, depth: int, channels: int, classes: int = 10, candidates: int = 8):
        # ``candidates`` < 8: the first ones of mobilenet_candidates (the bottlenecks by kernel size,
        # then identity and zero), for how the cost grows with the candidate count.
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                                  nn.ReLU6())
        self.blocks = nn.ModuleList([
            layer_cls(mobilenet_candidates(channels)[:candidates], nn.Parameter(torch.randn(candidates) * 1e-3),
                      nn.Softmax(-1), f'block{i}')
            for i in range(depth)
        ])
        self.head = nn.Linear(channels, classes)

    def mixed(self):
        return list(self.blocks)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x.mean((2, 3)))


class InputChain(nn.Module):
    """``depth`` mixed inputs, each picking one of ``n`` projections of the running state."""

    def __init__(self, layer_cls, input_cls, depth: int, n: int, dim: int):
        super().__init__()
        self.proj = nn.ModuleList([nn.Linear(dim, dim) for _ in range(n)])
        self.inputs = nn.ModuleList([
            input_cls(n, 1, nn.Parameter(torch.randn(n) * 1e-3), nn.Softmax(-1), f'input{i}') for i in range(depth)
        ])

    def mixed(self):
        return list(self.inputs)

    def forward(self, x):
        for choice in self.inputs:
            x = torch.tanh(choice([p(x) for p in self.proj]))
        return x
