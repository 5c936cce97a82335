"""A search run as its own process for test_resume.py, so that the test can SIGKILL it mid-epoch.

    python resume_worker.py KIND MODE OUT_DIR [--kill-at EPOCH,STEP] [--resume] [--epochs 3]

KIND: ``script`` (a plain training loop of proxyless_rs's layers, checkpointing with torch.save
after every epoch, as docs/nni.md's recipe does), ``strategy`` (proxyless_rs's strategy through
the installed NNI's experiment, checkpointing through Lightning's ModelCheckpoint), ``values`` (the
same strategy on a space of value choices: a width shared by two mixed operations) or ``cells``
(the same on one or two cells of two nodes, a depth expression: ``value_spaces.cell_space``).
MODE: ``full`` or ``two``. With ``--kill-at``, the process writes ``OUT_DIR/killable`` at that
step of that epoch and waits there for the test's SIGKILL. With ``--resume``, it continues from the last
checkpoint in OUT_DIR. At the end it writes ``OUT_DIR/result.pt``: every tensor of the search's
state and its export.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings('ignore')

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

EPOCHS = 3


def digits():
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    return (x[:320], y[:320]), (x[320:480], y[320:480])


def wait_for_kill(out: Path) -> None:
    (out / 'killable').write_text(str(os.getpid()))
    time.sleep(600)
    sys.exit('not killed')


def script(mode: str, out: Path, kill_at: tuple[int, int] | None, resume: bool, epochs: int) -> dict:
    import proxyless_rs
    from proxyless_rs.nni.version import NNI3

    if NNI3:  # NNI 3.0's supermodules outside a ModelSpace, as tests/conftest.py builds them
        import nni.mutable.frozen

        nni.mutable.frozen._ENSURE_FROZEN_STRICT = False

    torch.manual_seed(0)

    def layer(label, n):
        ops = [(f'op{i}', nn.Sequential(nn.Linear(32, 32), [nn.ReLU(), nn.Tanh(), nn.Identity()][i]))
               for i in range(n)]
        return proxyless_rs.ProxylessMixedLayer(ops, nn.Parameter(torch.randn(n) * 1e-3), nn.Softmax(-1), label,
                                                mode=mode)

    model = nn.Sequential(nn.Linear(64, 32), layer('first', 3), layer('second', 2), nn.Linear(32, 10))
    mixed = [model[1], model[2]]
    # parameters(arch=False): the weights without the alphas under either NNI (NNI 3.0's own
    # parameters() includes them), so that the optimizers' state dicts load under the other.
    weights = torch.optim.SGD([p for m in model for p in (m.parameters(arch=False) if m in mixed else m.parameters())],
                              lr=0.05, momentum=0.9)
    arch = torch.optim.Adam([p for m in mixed for p in m.parameters(arch=True)], lr=0.05)
    (xt, yt), (xv, yv) = digits()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xt, yt), batch_size=32, shuffle=True)
    val = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(xv, yv), batch_size=32, shuffle=True)
    checkpoint = out / 'last.pt'
    start = 0
    if resume:
        # The recipe: modules, both optimizers, the epoch, and the random streams.
        state = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(state['model'])
        weights.load_state_dict(state['weights'])
        arch.load_state_dict(state['arch'])
        proxyless_rs.checkpoint.set_rng_state(state['rng'])
        start = state['epoch'] + 1
    for epoch in range(start, epochs):
        val_batches = iter(val)
        for step, (x, y) in enumerate(loader):
            if kill_at == (epoch, step):
                wait_for_kill(out)
            try:
                xv_, yv_ = next(val_batches)
            except StopIteration:
                val_batches = iter(val)
                xv_, yv_ = next(val_batches)
            for m in mixed:
                m.resample({})
            arch.zero_grad()
            with proxyless_rs.no_weight_grad(model):
                F.cross_entropy(model(xv_), yv_).backward()
            arch.step()
            proxyless_rs.rescale_two_path(*mixed)
            for m in mixed:
                m.resample({})
            weights.zero_grad()
            with proxyless_rs.no_arch_grad(*mixed):
                F.cross_entropy(model(x), y).backward()
            weights.step()
        state = {'model': model.state_dict(), 'weights': weights.state_dict(), 'arch': arch.state_dict(),
                 'rng': proxyless_rs.checkpoint.rng_state(), 'epoch': epoch}
        torch.save(state, out / 'last.tmp')
        os.replace(out / 'last.tmp', checkpoint)  # a kill mid-write leaves the previous checkpoint whole
    memo: dict = {}
    for m in mixed:
        memo.update(m.export(memo))
    return {'state': {k: v.clone() for k, v in model.state_dict().items()}, 'export': memo,
            'optimizers': [weights.state_dict(), arch.state_dict()]}


def space() -> nn.Module:
    """The strategy's search space in the installed NNI's API: a LayerChoice and an InputChoice, whose
    module names are the same under both NNI versions."""
    from proxyless_rs.nni.version import NNI3

    if NNI3:
        import nni.nas.nn.pytorch as nas_nn

        class Space(nas_nn.ModelSpace):
            def __init__(self):
                super().__init__()
                self.stem = nn.Linear(64, 32)
                self.first = nas_nn.LayerChoice([nn.Linear(32, 32), nn.Sequential(nn.Linear(32, 32), nn.Tanh()),
                                                 nn.Identity()], label='first')
                self.readout = nas_nn.InputChoice(2, 1, label='readout')
                self.head = nn.Linear(32, 10)

            def forward(self, x):
                h = torch.relu(self.stem(x))
                return self.head(self.readout([h, self.first(h)]))

        return Space()
    import nni.retiarii.nn.pytorch as nas_nn
    from nni.retiarii import model_wrapper

    @model_wrapper
    class Space(nas_nn.Module):  # type: ignore[no-redef]
        def __init__(self):
            super().__init__()
            self.stem = nas_nn.Linear(64, 32)
            self.first = nas_nn.LayerChoice([nas_nn.Linear(32, 32),
                                             nas_nn.Sequential(nas_nn.Linear(32, 32), nas_nn.Tanh()),
                                             nas_nn.Identity()], label='first')
            self.readout = nas_nn.InputChoice(2, 1, label='readout')
            self.head = nas_nn.Linear(32, 10)

        def forward(self, x):
            h = torch.relu(self.stem(x))
            return self.head(self.readout([h, self.first(h)]))

    return Space()


def value_space() -> nn.Module:
    """A space of value choices in the installed NNI's API: one width shared by two linear layers."""
    from proxyless_rs.nni.version import NNI3

    if NNI3:
        import nni
        import nni.nas.nn.pytorch as nas_nn

        class Values(nas_nn.ModelSpace):
            def __init__(self):
                super().__init__()
                width = nni.choice('width', [16, 32])
                self.stem = nas_nn.MutableLinear(64, width)
                self.head = nas_nn.MutableLinear(width, 10)

            def forward(self, x):
                return self.head(torch.tanh(self.stem(x)))

        return Values()
    import nni.retiarii.nn.pytorch as nas_nn
    from nni.retiarii import model_wrapper

    @model_wrapper
    class Values(nas_nn.Module):  # type: ignore[no-redef]
        def __init__(self):
            super().__init__()
            width = nas_nn.ValueChoice([16, 32], label='width')
            self.stem = nas_nn.Linear(64, width)
            self.head = nas_nn.Linear(width, 10)

        def forward(self, x):
            return self.head(torch.tanh(self.stem(x)))

    return Values()


def supernet() -> nn.Module:
    """The supernet proxyless_rs's strategy builds of :func:`space` under the installed NNI (no search)."""
    import proxyless_rs
    from proxyless_rs.nni.version import NNI3

    search = proxyless_rs.strategy.Proxyless()
    if NNI3:
        return search.mutate_model(space())
    search.attach_model(space())
    return search.model.model.model  # the one-shot module's evaluator module's model


def strategy(mode: str, out: Path, kill_at: tuple[int, int] | None, resume: bool, epochs: int,
             kind: str = 'strategy') -> dict:
    import pytorch_lightning as pl

    import proxyless_rs
    from proxyless_rs.nni.version import NNI3

    class KillAt(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx, *args):
            if kill_at == (trainer.current_epoch, batch_idx):
                wait_for_kill(out)

    (xt, yt), (xv, yv) = digits()
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=str(out), save_last=True, every_n_epochs=1)
    kwargs = dict(max_epochs=epochs, accelerator='cpu', callbacks=[checkpoints, KillAt()], logger=False,
                  enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=True)
    # Just above the least latency (0.6 ms): the multiplier rises and stays up.
    cost_spec = {'latency': {'limit': 0.65, 'multiplier': proxyless_rs.LagrangeMultiplier(0.65, lr=0.5)}}
    table = {'first': {'0': 1.0, '1': 2.0, '2': 0.5}, 'readout': {'0': 0.1, '1': 0.1}}
    if kind == 'values':  # each of the two operations counts the width's row: 0.6 ms at least
        table = {'width': {'16': 0.3, '32': 0.5}}
    if kind == 'cells':  # each of the two cells counts its slots' ops: 0.6 ms at least
        ops = {'linear': 0.3, 'tanh': 0.2, 'skip': 0.15}
        table = {'cell/op_1_0': ops, 'cell/op_2_0': ops, 'cell/input_1_0': {'0': 0.0},
                 'cell/input_2_0': {'0': 0.0, '1': 0.0}, 'depth': {'1': 0.0, '2': 0.1}}
    from value_spaces import cell_space

    make_space = {'values': value_space, 'cells': cell_space}.get(kind, space)
    options = dict(arc_learning_rate=0.05, mode=mode, costs={'latency': table}, cost_spec=cost_spec,
                   resume=str(out / 'last.ckpt') if resume else None)

    def loaders(data_loader) -> dict:  # the NNI version's traced DataLoader
        return dict(
            train_dataloaders=data_loader(torch.utils.data.TensorDataset(xt, yt), batch_size=32, shuffle=True),
            val_dataloaders=data_loader(torch.utils.data.TensorDataset(xv, yv), batch_size=32, shuffle=True))

    torch.manual_seed(0)
    if NNI3:
        from nni.nas.evaluator.pytorch import Classification, DataLoader
        from nni.nas.experiment import NasExperiment

        evaluator = Classification(**loaders(DataLoader), num_classes=10, **kwargs)
        search = proxyless_rs.strategy.Proxyless(**options)
        experiment = NasExperiment(make_space(), evaluator, search)
        experiment.run()
        module = search.oneshot_module
        export = module.export()
        experiment.stop()
    else:
        from nni.retiarii.evaluator.pytorch import Classification, DataLoader
        from nni.retiarii.experiment.pytorch import RetiariiExeConfig, RetiariiExperiment

        evaluator = Classification(**loaders(DataLoader), **kwargs)
        search = proxyless_rs.strategy.Proxyless(**options)
        experiment = RetiariiExperiment(make_space(), evaluator, [], search)
        config = RetiariiExeConfig()
        config.execution_engine = 'oneshot'
        experiment.run(config)
        module = search.model
        (export,) = search.export_top_models()
    return {'state': {k: v.detach().clone() for k, v in module.state_dict().items()}, 'export': export,
            'multiplier': module.cost_spec['latency'].multiplier.state_dict()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('kind', choices=['script', 'strategy', 'values', 'cells'])
    parser.add_argument('mode', choices=['full', 'two'])
    parser.add_argument('out')
    parser.add_argument('--kill-at', default=None)
    parser.add_argument('--resume', action='store_true')
    parser.add_argument('--epochs', type=int, default=EPOCHS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    kill_at = tuple(int(v) for v in args.kill_at.split(',')) if args.kill_at else None
    if args.kind == 'script':
        result = script(args.mode, out, kill_at, args.resume, args.epochs)
    else:
        result = strategy(args.mode, out, kill_at, args.resume, args.epochs, kind=args.kind)
    torch.save(result, out / 'result.pt')


if __name__ == '__main__':
    main()
