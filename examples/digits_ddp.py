"""A data-parallel ProxylessNAS search from a plain PyTorch script, on torch.distributed.

    torchrun --nproc_per_node 2 examples/digits_ddp.py          # gloo on CPU
    (on GPUs: --backend nccl, one process per GPU)

Each rank trains on its own shard of scikit-learn's digits. The only proxyless_rs-specific line is
``proxyless_rs.distributed.setup(supernet)`` before wrapping in DDP; see that module for what it
does (rank 0's draws broadcast, architecture gradients averaged, alphas kept out of DDP).
"""

from __future__ import annotations

import argparse
import ast
import datetime
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, os.path.dirname(__file__))
import proxyless_rs  # noqa: E402
from digits_search import DigitsSupernet, digits  # noqa: E402


def main(keep: list) -> None:
    """The search; ``keep`` holds the tensors of the last collectives until the process ends."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--backend', default='gloo')
    parser.add_argument('--epochs', type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    # A timeout, so that a rank that dies makes the others fail instead of hang.
    dist.init_process_group(args.backend, timeout=datetime.timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    if args.backend == 'nccl':
        device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', 0)))
        torch.cuda.set_device(device)
    else:
        device = torch.device('cpu')

    (xt, yt), (xv, yv), (xs, ys) = digits()
    xt, yt, xv, yv = (t[rank::world].to(device) for t in (xt, yt, xv, yv))
    torch.manual_seed(0)
    net = DigitsSupernet(proxyless_rs.ProxylessMixedLayer, proxyless_rs.ProxylessMixedInput).to(device)
    search = proxyless_rs.distributed.setup(net)             # the one extra call
    ddp = DDP(net, find_unused_parameters=True)              # unsampled candidates get no gradient
    w_opt = torch.optim.SGD(net.weight_parameters(), lr=0.05, momentum=0.9)
    a_opt = torch.optim.Adam(net.arch_parameters(), lr=3e-2, betas=(0.5, 0.999))

    batch = 16
    loss = None
    for epoch in range(args.epochs):
        for i in range(0, len(xt) - batch + 1, batch):
            j = i % (len(xv) - batch)
            with search.draws():                             # the same architecture on every rank,
                net.resample()                               # one collective for all the draws
            a_opt.zero_grad()
            F.cross_entropy(ddp(xv[j:j + batch]), yv[j:j + batch]).backward()   # alpha grads averaged
            a_opt.step()
            with search.draws():
                net.resample()
            w_opt.zero_grad()
            with proxyless_rs.no_arch_grad(net):
                loss = F.cross_entropy(ddp(xt[i:i + batch]), yt[i:i + batch])
                loss.backward()
            w_opt.step()
        if rank == 0:
            print(f'epoch {epoch}: loss {loss.item():.3f}, architecture {net.export()}', flush=True)

    architecture = net.export()
    net.resample(architecture)
    with torch.no_grad():
        accuracy = (net(xs.to(device)).argmax(-1) == ys.to(device)).float().mean().item()
    gathered = gather_architectures(architecture, world, device, keep)
    if rank == 0:
        print(f'exported on every rank: {gathered}; test accuracy {accuracy:.3f}', flush=True)
    # Every rank reaches the teardown together (a rank that leaves while rank 0, which holds the
    # rendezvous store, still talks to it can leave rank 0 hanging), and DDP goes before the process
    # group: a DDP freed after it would destroy the group holding the GIL, which a gloo thread
    # finishing its last work may need (a deadlock seen on torch 2.13 and 2.0; torch's own binding of
    # the group releases the GIL when it destroys it, DDP's reducer does not). The last loss goes
    # too: its graph holds DDP's autograd node, which holds the reducer.
    dist.barrier()
    del loss, ddp
    dist.destroy_process_group()


def gather_architectures(architecture: dict, world: int, device: torch.device, keep: list) -> list:
    """Every rank's ``architecture``, gathered as tensors that ``keep`` holds until the process ends.

    Not ``dist.all_gather_object``: its tensors are freed when it returns, so the last reference to
    them can be a gloo worker's, which then needs the GIL to free their Python objects; if the main
    thread is destroying the process group then (holding the GIL, waiting for that worker), both
    wait for ever (torch 2.0; torch issue 56297). Tensors that Python still holds are freed by a
    worker without the GIL."""
    data = torch.tensor(list(repr(sorted(architecture.items())).encode()), dtype=torch.uint8, device=device)
    size = torch.tensor([data.numel()], device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = max(int(s) for s in sizes)
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[:data.numel()] = data
    gathered = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    keep += [data, size, *sizes, padded, *gathered]
    return [dict(ast.literal_eval(bytes(g[:int(s)].tolist()).decode())) for g, s in zip(gathered, sizes)]


if __name__ == '__main__':
    _kept: list = []  # freed at exit, after the process group (see gather_architectures)
    main(_kept)
