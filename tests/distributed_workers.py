"""Worker processes for test_distributed.py (gloo on CPU, or NCCL with one GPU per rank; loopback only)."""

from __future__ import annotations

import contextlib
import copy
import datetime
import faulthandler
import os
import time
import traceback
import warnings

warnings.filterwarnings('ignore')

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from conftest import resample_in_order  # noqa: E402

TIMEOUT = datetime.timedelta(seconds=20)


def digits_shard(rank: int, world: int):
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    train, val = slice(0, 640), slice(640, 960)
    return (x[train][rank::world], y[train][rank::world]), (x[val][rank::world], y[val][rank::world])


class Supernet(nn.Module):
    def __init__(self):
        super().__init__()
        import proxyless_rs

        self.stem = nn.Linear(64, 32)
        self.first = proxyless_rs.ProxylessMixedLayer(
            [('linear', nn.Linear(32, 32)), ('tanh', nn.Sequential(nn.Linear(32, 32), nn.Tanh())),
             ('skip', nn.Identity())], nn.Parameter(torch.randn(3)), nn.Softmax(-1), 'first')
        self.second = proxyless_rs.ProxylessMixedLayer(
            [('linear', nn.Linear(32, 32)), ('relu', nn.Sequential(nn.Linear(32, 32), nn.ReLU()))],
            nn.Parameter(torch.randn(2)), nn.Softmax(-1), 'second')
        self.readout = proxyless_rs.ProxylessMixedInput(2, 1, nn.Parameter(torch.randn(2)), nn.Softmax(-1), 'readout')
        self.head = nn.Linear(32, 10)

    def mixed(self):
        return [self.first, self.second, self.readout]

    def resample(self, memo=None):
        return resample_in_order(self.mixed(), memo)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        a = self.first(h)
        b = self.second(a)
        return self.head(self.readout([a, b]))


def watched(target, seconds: float, rank: int, world: int, port: int, out_dir: str, **kwargs) -> None:
    """Runs target(rank, world, port, out_dir, **kwargs); if it is still running after ``seconds``,
    writes every thread's stack to rank<r>.hang and exits, so a hang says where it is; an exception's
    traceback goes to rank<r>.err before it ends the process."""
    with open(os.path.join(out_dir, f'rank{rank}.hang'), 'w') as stacks:
        faulthandler.dump_traceback_later(seconds, exit=True, file=stacks)
        try:
            target(rank, world, port, out_dir, **kwargs)
        except Exception:
            with open(os.path.join(out_dir, f'rank{rank}.err'), 'w') as f:
                f.write(traceback.format_exc())
            raise
        faulthandler.cancel_dump_traceback_later()


def _finish() -> None:
    # Every rank reaches the teardown together: a rank that tears down while another still
    # talks to it (rank 0 holds the TCP store) can leave that one waiting in destroy_process_group.
    # The callers drop their DDP first, while the process group is still alive: a reducer that drops
    # the group's last reference destroys it holding the GIL, which a gloo thread finishing its last
    # work may need (a deadlock; torch's ProcessGroup binding releases the GIL there, the reducer not).
    dist.barrier()
    dist.destroy_process_group()


def _init(rank: int, world: int, port: int, backend: str = 'gloo') -> None:
    dist.init_process_group(backend, init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=world,
                            timeout=TIMEOUT)


def weight_step(model, ddp, draws, w_opt, x, y) -> None:
    """A weight step on ``x``, ``y``: a resample (in ``draws()``), the loss through DDP, no alpha-gradient work."""
    import proxyless_rs

    with draws():
        model.resample()
    w_opt.zero_grad()
    with proxyless_rs.no_arch_grad(model):
        F.cross_entropy(ddp(x), y).backward()
    w_opt.step()


def plain_search(rank: int, world: int, port: int, out_dir: str, steps: int = 20, die_at: int | None = None,
                 backend: str = 'gloo', rounds: bool = True) -> None:
    """A plain-PyTorch search: setup + DDP; arch step on validation shards, weight step on training shards.

    ``backend='nccl'``: rank r runs on cuda:r. What it saves is moved to the host. ``rounds``: each
    resample in a draw round (``search.draws()``), else each draw broadcast on its own."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    import proxyless_rs

    torch.set_num_threads(1)
    device = torch.device('cuda', rank) if backend == 'nccl' else torch.device('cpu')
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    _init(rank, world, port, backend)
    # Different seeds per rank on purpose: weights, alphas and draws must still agree.
    torch.manual_seed(100 + rank)
    model = Supernet().to(device)
    search = proxyless_rs.distributed.setup(model)
    ddp = DDP(model, device_ids=[rank] if device.type == 'cuda' else None, find_unused_parameters=True)
    draws = search.draws if rounds else contextlib.nullcontext
    alphas = [m._arch_alpha for m in model.mixed()]
    arch_ids = {id(a) for a in alphas}
    weights = [p for p in model.parameters() if id(p) not in arch_ids]
    arc_opt = torch.optim.Adam(alphas, lr=0.05)
    w_opt = torch.optim.SGD(weights, lr=0.05)
    (xt, yt), (xv, yv) = (tuple(t.to(device) for t in pair) for pair in digits_shard(rank, world))
    samples, step0 = [], {}
    for step in range(steps):
        if die_at is not None and rank == 1 and step == die_at:
            os._exit(3)
        i = (step * 16) % (len(xt) - 16)
        # Architecture step.
        with draws():
            sample = model.resample()
        samples.append(sample)
        if step == 0:
            local = copy.deepcopy(model)  # not set up: its hooks leave the gradient local
            local.resample(sample)
            F.cross_entropy(local(xv[i:i + 16]), yv[i:i + 16]).backward()
            # A layer off the loss's path gets no gradient: 0, as the all-reduce counts it.
            step0['local'] = [torch.zeros_like(m._arch_alpha).cpu() if m._arch_alpha.grad is None
                              else m._arch_alpha.grad.cpu() for m in local.mixed()]
        arc_opt.zero_grad()
        F.cross_entropy(ddp(xv[i:i + 16]), yv[i:i + 16]).backward()
        if step == 0:
            step0['averaged'] = [a.grad.cpu() for a in alphas]
        arc_opt.step()
        weight_step(model, ddp, draws, w_opt, xt[i:i + 16], yt[i:i + 16])
    torch.save({
        'samples': samples,
        'state': {k: v.detach().cpu() for k, v in model.state_dict().items()},
        'saved_entries': [len(m.ctx) for m in model.mixed()],
        'step0': step0,
    }, os.path.join(out_dir, f'rank{rank}.pt'))
    del ddp
    _finish()


def chain(layers: int, width: int = 8) -> nn.Module:
    """A supernet of ``layers`` mixed layers in a row (two candidates each), for counting collectives."""
    import proxyless_rs

    class Chain(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Linear(64, width)
            self.layers = nn.ModuleList([proxyless_rs.ProxylessMixedLayer(
                [('linear', nn.Linear(width, width)), ('tanh', nn.Sequential(nn.Linear(width, width), nn.Tanh()))],
                nn.Parameter(torch.zeros(2)), nn.Softmax(-1), f'layer{i}') for i in range(layers)])
            self.head = nn.Linear(width, 10)

        def mixed(self):
            return list(self.layers)

        def resample(self, memo=None):
            return resample_in_order(self.mixed(), memo)

        def forward(self, x):
            h = self.stem(x)
            for layer in self.layers:
                h = layer(h)
            return self.head(h)

    return Chain()


def count_collectives(rank: int, world: int, port: int, out_dir: str, layers: tuple[int, ...] = (2, 16),
                      steps: int = 4, warmup: int = 1) -> None:
    """For each depth in ``layers`` and with and without draw rounds: a plain search of ``steps``
    search steps (architecture and weight step) under DDP, counting the search's own collectives
    (broadcasts and all-reduces on its group) per search step and timing the steps."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    import proxyless_rs

    torch.set_num_threads(1)
    _init(rank, world, port)
    (xt, yt), (xv, yv) = digits_shard(rank, world)
    results = []
    for depth in layers:
        for rounds in (True, False):
            torch.manual_seed(rank)
            model = chain(depth)
            search = proxyless_rs.distributed.setup(model)
            ddp = DDP(model, find_unused_parameters=True)
            alphas = [m._arch_alpha for m in model.mixed()]
            arc_opt = torch.optim.Adam(alphas, lr=0.05)
            w_opt = torch.optim.SGD([p for p in model.parameters() if all(p is not a for a in alphas)], lr=0.05)
            calls = {'count': 0}
            originals = {name: getattr(dist, name) for name in ('broadcast', 'all_reduce')}

            def counted(original, group=search.group, calls=calls):
                def call(*args, **kwargs):
                    if kwargs.get('group') is group:
                        calls['count'] += 1
                    return original(*args, **kwargs)
                return call

            draws = search.draws if rounds else contextlib.nullcontext
            per_step, seconds = [], []
            for name, original in originals.items():
                setattr(dist, name, counted(original))
            try:
                for step in range(warmup + steps):
                    i = (step * 16) % (len(xt) - 16)
                    before, start = calls['count'], time.perf_counter()
                    with draws():
                        model.resample()
                    arc_opt.zero_grad()
                    F.cross_entropy(ddp(xv[i:i + 16]), yv[i:i + 16]).backward()
                    arc_opt.step()
                    weight_step(model, ddp, draws, w_opt, xt[i:i + 16], yt[i:i + 16])
                    if step >= warmup:
                        per_step.append(calls['count'] - before)
                        seconds.append(time.perf_counter() - start)
            finally:
                for name, original in originals.items():
                    setattr(dist, name, original)
            search.detach()
            results.append({'world': world, 'layers': depth, 'rounds': rounds, 'collectives': per_step,
                            'seconds': seconds})
    torch.save(results, os.path.join(out_dir, f'rank{rank}.pt'))
    del ddp
    _finish()


def diverging_draws(rank: int, world: int, port: int, out_dir: str) -> None:
    """Rank 1's alpha is changed behind the search's back: the next round says the ranks drew differently."""
    import proxyless_rs

    torch.set_num_threads(1)
    _init(rank, world, port)
    model = chain(2)
    search = proxyless_rs.distributed.setup(model)
    with torch.no_grad():
        for m in model.mixed():
            m._arch_alpha.copy_(torch.tensor([50.0, -50.0]) * (1 if rank == 0 else -1))
    with search.draws():
        model.resample()
    with search.draws():  # raises on every rank
        model.resample()
    _finish()


def ddp_evaluator(classification, dataloader, rank: int, world: int, strategy, **kwargs):
    """NNI's Classification evaluator (either NNI's) on the digits, one epoch of 6 steps under
    ``strategy`` on ``world`` CPU processes; the default generator seeded per rank on purpose."""
    from torch.utils.data import TensorDataset

    (xt, yt), (xv, yv) = digits_shard(0, 1)
    torch.manual_seed(7 + rank)
    return classification(
        train_dataloaders=dataloader(TensorDataset(xt, yt), batch_size=32, shuffle=True),
        val_dataloaders=dataloader(TensorDataset(xv, yv), batch_size=32, shuffle=True),
        max_epochs=1, limit_train_batches=6, accelerator='cpu', devices=world, strategy=strategy,
        enable_progress_bar=False, logger=False, enable_checkpointing=False, enable_model_summary=False, **kwargs)


def _choices_state(root) -> dict:
    """Every choice's alpha and live-call count (layers' and value choices')."""
    import proxyless_rs

    found = list(proxyless_rs._choices.choices(root))
    return {'alphas': [c._arch_alpha.detach().clone() for c in found], 'saved_entries': [len(c.ctx) for c in found]}


def lightning_search(rank: int, world: int, port: int, out_dir: str, kind: str = 'layers') -> None:
    """proxyless_rs.strategy.Proxyless through RetiariiExperiment, Lightning DDP on CPU (``kind``:
    ``layers``, ``values``, a width shared by two mixed operations, or ``cells``,
    ``value_spaces.cell_space``)."""
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), NODE_RANK='0')
    torch.set_num_threads(1)
    import nni.retiarii.nn.pytorch as nn_nni
    from nni.retiarii import model_wrapper
    from nni.retiarii.evaluator.pytorch import Classification, DataLoader
    from nni.retiarii.experiment.pytorch import RetiariiExeConfig, RetiariiExperiment
    from pytorch_lightning.strategies import DDPStrategy

    import proxyless_rs

    @model_wrapper
    class Space(nn_nni.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn_nni.Linear(64, 32)
            self.first = nn_nni.LayerChoice([nn_nni.Linear(32, 32), nn_nni.Identity()], label='first')
            self.readout = nn_nni.InputChoice(2, 1, label='readout')
            self.head = nn_nni.Linear(32, 10)

        def forward(self, x):
            h = torch.relu(self.stem(x))
            return self.head(self.readout([h, self.first(h)]))

    @model_wrapper
    class Values(nn_nni.Module):
        def __init__(self):
            super().__init__()
            width = nn_nni.ValueChoice([16, 32], label='width')
            self.stem = nn_nni.Linear(64, width)
            self.head = nn_nni.Linear(width, 10)

        def forward(self, x):
            return self.head(torch.relu(self.stem(x)))

    evaluator = ddp_evaluator(Classification, DataLoader, rank, world, DDPStrategy(
        process_group_backend='gloo', timeout=TIMEOUT))
    strategy = proxyless_rs.strategy.Proxyless(arc_learning_rate=0.05)
    from value_spaces import cell_space

    space = {'layers': Space, 'values': Values, 'cells': cell_space}[kind]()
    experiment = RetiariiExperiment(space, evaluator, [], strategy)
    config = RetiariiExeConfig()
    config.execution_engine = 'oneshot'
    experiment.run(config)
    (architecture,) = experiment.export_top_models()
    torch.save({
        'architecture': architecture,
        'weights': {k: v.detach().clone() for k, v in strategy.model.state_dict().items()},
        'rounds': strategy.model._distributed_search.rounds,
        **_choices_state(strategy.model),
    }, os.path.join(out_dir, f'rank{rank}.pt'))


def lightning_search_nni3(rank: int, world: int, port: int, out_dir: str, kind: str = 'layers') -> None:
    """proxyless_rs.strategy.Proxyless through NNI 3.0's NasExperiment, Lightning DDP on CPU (``kind``:
    as :func:`lightning_search`'s)."""
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), NODE_RANK='0')
    torch.set_num_threads(1)
    import nni
    import torch.nn as nn
    from nni.nas.evaluator.pytorch import Classification, DataLoader
    from nni.nas.experiment import NasExperiment
    from nni.nas.nn.pytorch import InputChoice, LayerChoice, ModelSpace, MutableLinear
    from pytorch_lightning.strategies import DDPStrategy

    import proxyless_rs

    class Space(ModelSpace):
        def __init__(self):
            super().__init__()
            self.stem = nn.Linear(64, 32)
            self.first = LayerChoice({'linear': nn.Linear(32, 32), 'identity': nn.Identity()}, label='first')
            self.readout = InputChoice(2, 1, label='readout')
            self.head = nn.Linear(32, 10)

        def forward(self, x):
            h = torch.relu(self.stem(x))
            return self.head(self.readout([h, self.first(h)]))

    class Values(ModelSpace):
        def __init__(self):
            super().__init__()
            width = nni.choice('width', [16, 32])
            self.stem = MutableLinear(64, width)
            self.head = MutableLinear(width, 10)

        def forward(self, x):
            return self.head(torch.relu(self.stem(x)))

    # Lightning 2.0's DDP needs find_unused_parameters for a single-path supernet; NNI 3.0's
    # evaluators name num_classes (torchmetrics 1.0).
    evaluator = ddp_evaluator(Classification, DataLoader, rank, world, DDPStrategy(
        process_group_backend='gloo', timeout=TIMEOUT, find_unused_parameters=True), num_classes=10)
    strategy = proxyless_rs.strategy.Proxyless(arc_learning_rate=0.05)
    from value_spaces import cell_space

    space = {'layers': Space, 'values': Values, 'cells': cell_space}[kind]()
    experiment = NasExperiment(space, evaluator, strategy)
    experiment.run()
    (model,) = strategy.list_models()
    module = strategy.oneshot_module
    torch.save({
        'architecture': dict(model.sample),
        'weights': {k: v.detach().clone() for k, v in module.state_dict().items()},
        'rounds': module._distributed_search.rounds,
        **_choices_state(module),
    }, os.path.join(out_dir, f'rank{rank}.pt'))
    experiment.stop()
