"""NNI's own hub model spaces with value choices (MobileNetV3, ShuffleNet's channel search, AutoFormer)
searched by proxyless_rs's strategy through each NNI version's experiment API, on random data.

- Small configurations: the search runs, exports a full architecture that NNI's own freeze takes
  (NNI 3.0's ``ModelSpace.freeze``, NNI 2.10's ``fixed_arch``), and ``freeze`` gives a child whose
  eval outputs are the supernet's with that architecture fixed, bit for bit; NNI's frozen model
  loads the child's weights and gives the same outputs.
- NNI's hub x strategy matrix (``test/algo/nas/oneshot/test_hub.py`` at v3.0,
  ``test/algo/nas/test_space_hub_oneshot.py`` at v2.10.1): its Proxyless row, which NNI skips on these
  spaces ("The space has used unsupported APIs"), with NNI's configurations and NNI's loop, on random
  data of its datasets' shapes (ImageNet's 3x224x224, 1000 classes, 4 samples, batch 2).
"""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from torch.utils.data import TensorDataset

import proxyless_rs
from conftest import NNI3

warnings.filterwarnings('ignore')

if NNI3:
    import nni.nas.evaluator.pytorch as pl
    import nni.nas.hub.pytorch as hub
    from nni.nas.execution import SequentialExecutionEngine
    from nni.nas.experiment import NasExperiment
    from nni.nas.space import RawFormatModelSpace
else:
    import nni.retiarii.evaluator.pytorch as pl
    import nni.retiarii.hub.pytorch as hub
    from nni.retiarii import fixed_arch
    from nni.retiarii.experiment.pytorch import RetiariiExeConfig, RetiariiExperiment


@pytest.fixture(autouse=True, scope='module')
def quiet_lightning():
    logger = logging.getLogger('pytorch_lightning')
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


def autoformer_hooks() -> list:
    """NNI 2.10's AutoFormer registers its mixed operations through the strategy's hooks (3.0's itself)."""
    if NNI3:
        return []
    pytest.importorskip('timm', reason="NNI 2.10's AutoFormer imports timm")
    from nni.retiarii.hub.pytorch.autoformer import MixedAbsPosEmbed, MixedClsToken

    return [MixedAbsPosEmbed.mutate, MixedClsToken.mutate]


SMALL = {
    'mobilenetv3': lambda: hub.MobileNetV3Space(base_widths=(8, 8, 8, 8, 8, 8, 8, 16, 32),
                                                width_multipliers=(0.5, 1.0), expand_ratios=(1., 2.), num_labels=10),
    'shufflenet': lambda: hub.ShuffleNetSpace(channel_search=True, num_labels=10),
    'autoformer': lambda: hub.AutoformerSpace(search_embed_dim=(24, 32), search_mlp_ratio=(1.0, 2.0),
                                              search_num_heads=(2, 4), search_depth=(1, 2), img_size=32, patch_size=8,
                                              **{'num_labels' if NNI3 else 'num_classes': 10}),
    # The NDS family (cells), small: every slot's op and input searched; a width and a depth choice.
    'darts': lambda: hub.DARTS(width=8, num_cells=3, dataset='cifar'),
    'pnas': lambda: hub.PNAS(width=8, num_cells=3, dataset='cifar'),
    'enas': lambda: hub.ENAS(width=8, num_cells=3, dataset='cifar'),
    'nasnet': lambda: hub.NASNet(width=8, num_cells=3, dataset='cifar'),
    'amoeba': lambda: hub.AmoebaNet(width=8, num_cells=3, dataset='cifar'),
    'darts_width': lambda: hub.DARTS(width=(8, 16), num_cells=3, dataset='cifar'),
    'darts_depth': lambda: hub.DARTS(width=8, num_cells=(3, 6), dataset='cifar'),
}
# Where NNI's own frozen model is another network than the supernet with the architecture fixed, as
# NNI's path-sampling supernet has it: a ``loose_end`` cell's supernet concatenates every node (so that
# what follows sees fixed channels), NNI's frozen cell only the unused ones; an NDS stage of one cell
# aligns its passed-on input in the supernet, where NNI's frozen next cell takes the other shape.
LOOSE_END = ('enas', 'nasnet', 'amoeba')


def nni_has_the_childs_architecture(name: str, architecture: dict) -> bool:
    return name not in LOOSE_END and not (name == 'darts_depth' and architecture['depth'] == 3)


def random_data(shape, classes: int, count: int, batch: int):
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(count, *shape), torch.randint(0, classes, (count,)))
    return pl.DataLoader(data, batch_size=batch), pl.DataLoader(data, batch_size=batch)


def search(model_space, hooks: list, classes: int = 10, shape=(3, 32, 32), count: int = 16, batch: int = 4,
           **options):
    """Our strategy through the version's experiment API; returns (strategy, architecture, supernet,
    the one-shot module's searched modules)."""
    train, val = random_data(shape, classes, count, batch)
    common = dict(train_dataloaders=train, val_dataloaders=val, max_epochs=1, logger=False, enable_checkpointing=False,
                  enable_model_summary=False, enable_progress_bar=False)
    strategy = proxyless_rs.strategy.Proxyless(mutation_hooks=hooks, arc_learning_rate=0.05, **options)
    if NNI3:
        experiment = NasExperiment(model_space, pl.Classification(**common, num_classes=classes), strategy)
        experiment.run()
        architecture = experiment.export_top_models(formatter='dict')[0]
        return strategy, architecture, strategy.supernet, list(strategy.oneshot_module.supernet_modules())
    experiment = RetiariiExperiment(model_space, pl.Classification(**common), [], strategy)
    config = RetiariiExeConfig()
    config.execution_engine = 'oneshot'
    experiment.run(config)
    return strategy, experiment.export_top_models()[0], strategy.model.model.model, list(strategy.model.nas_modules)


def nni_frozen(name: str, architecture: dict):
    """NNI's own model of ``architecture``: NNI 3.0's ``ModelSpace.freeze``, NNI 2.10's ``fixed_arch``."""
    if NNI3:
        return SMALL[name]().freeze(architecture)
    with fixed_arch(architecture):
        return SMALL[name]()


@pytest.mark.parametrize('name', list(SMALL))
def test_a_hub_space_is_searched_exported_and_frozen(name):
    hooks = autoformer_hooks() if name == 'autoformer' else []
    torch.manual_seed(0)
    strategy, architecture, supernet, modules = search(SMALL[name](), hooks)
    choices = list(proxyless_rs._choices.choices(supernet))
    labels = {choice.label for choice in choices}
    # value choices, cells' slots or a depth expression were searched (sites of a module, not layers)
    assert any(hasattr(c, 'module') for c in choices)
    assert labels <= set(architecture)  # and the depth chains' depths
    # The architecture optimizer moved the alphas (from randn * 1e-3; 4 steps at 0.05).
    assert max(float(c._arch_alpha.detach().abs().max()) for c in choices) > 0.05

    child = proxyless_rs.freeze(supernet, architecture)
    memo = dict(architecture)
    for module in modules:
        memo.update(module.resample(memo))
    supernet.eval()
    child.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = supernet(x)
        assert torch.equal(child(x), expected)
    # NNI's own freeze takes the export, and its model holds the child's weights.
    if not nni_has_the_childs_architecture(name, architecture):
        with pytest.raises(ValueError, match='not the same architecture'):
            proxyless_rs.child.load_weights(nni_frozen(name, architecture), child)
        return
    frozen = proxyless_rs.child.load_weights(nni_frozen(name, architecture), child).eval()
    if name != 'mobilenetv3':
        with torch.no_grad():
            assert torch.equal(frozen(x), expected)
    # else: NNI's MobileNetV3, frozen, can be another network than its supernet: its first block adds a
    # residual where `in_channels is out_channels`, which holds for the two (small, cached) equal ints
    # a frozen width gives and never for the supernet's two value-choice expressions.
    if name != 'autoformer':  # NNI's relative position embedding calls int() on a tensor: no trace of it
        traced = torch.jit.trace(child, x)
        assert torch.equal(traced(x), expected)


# --- NNI's matrix, its Proxyless row ----------------------------------------------------------------

def nni_factory(alias: str):
    """NNI's ``_hub_factory`` (the same in both versions' tests) for the spaces of this row."""
    if alias == 'nasbench201':
        return hub.NasBench201()
    if alias == 'mobilenetv3':
        return hub.MobileNetV3Space()
    if alias == 'mobilenetv3_small':
        return hub.MobileNetV3Space(width_multipliers=(0.75, 1, 1.5), expand_ratios=(4, 6))
    if alias == 'proxylessnas':
        return hub.ProxylessNAS()
    if alias == 'shufflenet':
        return hub.ShuffleNetSpace()
    if alias == 'autoformer':
        return hub.AutoformerSpace()
    num_cells = (4, 8) if '_smalldepth' in alias else (8, 12) if '_depth' in alias else 8
    width = (8, 16) if '_width' in alias else 16
    dataset = 'imagenet' if '_imagenet' in alias else 'cifar'
    family = {'nasnet': hub.NASNet, 'enas': hub.ENAS, 'amoeba': hub.AmoebaNet, 'pnas': hub.PNAS, 'darts': hub.DARTS}
    return family[alias.split('_')[0]](width=width, num_cells=num_cells, dataset=dataset)


# NNI's list, in its order (NasBench101 aside: NNI 3.0's differentiable strategies refuse its cell).
MATRIX = ['nasbench201', 'mobilenetv3', 'mobilenetv3_small', 'proxylessnas', 'shufflenet', 'autoformer',
          'nasnet', 'enas', 'amoeba', 'pnas', 'darts',
          'darts_smalldepth', 'darts_depth', 'darts_width', 'darts_width_smalldepth', 'darts_width_depth',
          'darts_imagenet', 'darts_width_smalldepth_imagenet',
          'enas_smalldepth', 'enas_depth', 'enas_width', 'enas_width_smalldepth', 'enas_width_depth',
          'enas_imagenet', 'enas_width_smalldepth_imagenet',
          'pnas_width_smalldepth', 'amoeba_width_smalldepth']
IMAGENET = ('mobilenetv3', 'mobilenetv3_small', 'proxylessnas', 'shufflenet', 'autoformer')


@pytest.mark.matrix
@pytest.mark.parametrize('space_type', MATRIX)
def test_nni_hub_matrix_proxyless_row(space_type):
    """NNI's ``test_hub_oneshot`` with ``strategy_type='proxyless'`` and its skip removed."""
    hooks = autoformer_hooks() if space_type == 'autoformer' else []
    model_space = nni_factory(space_type)
    imagenet = space_type in IMAGENET or 'imagenet' in space_type
    shape, classes = ((3, 224, 224), 1000) if imagenet else ((3, 32, 32), 10)
    train, val = random_data(shape, classes, count=4, batch=2)  # NNI's subset of 4, batch size 2
    common = dict(train_dataloaders=train, val_dataloaders=val, max_epochs=1, export_onnx=False, logger=False,
                  enable_checkpointing=False, enable_model_summary=False)
    strategy = proxyless_rs.strategy.Proxyless(mutation_hooks=hooks)
    if NNI3:
        evaluator = pl.Classification(**common, accelerator='auto', devices=1, num_classes=classes)
        strategy(RawFormatModelSpace(model_space, evaluator), SequentialExecutionEngine())
        (model,) = list(strategy.list_models())
        assert model.sample  # a full architecture of the space
    else:
        config = RetiariiExeConfig()
        config.execution_engine = 'oneshot'
        experiment = RetiariiExperiment(model_space, pl.Classification(**common), strategy=strategy)
        experiment.run(config)
        assert experiment.export_top_models()[0]


def test_nasbench101_searches_under_nni2_and_is_refused_with_the_reason_under_nni3():
    """NNI 3.0's cell constraint is no categorical choice: every one-shot strategy refuses it (here with
    the reason); NNI 2.10's cell is layer and input choices, which proxyless_rs searches as NNI 2.10's
    ProxylessNAS does (the full cell; its edge limit unchecked, ``num_nodes`` not searched)."""
    space = hub.NasBench101(stem_out_channels=8, num_stacks=1, num_modules_per_stack=1)
    if NNI3:
        refusal = r"NasBench101 holds 'cell/final', a NasBench101CellConstraint.*max_num_edges"
        with pytest.raises(TypeError, match=refusal):
            search(space, [])
        return
    torch.manual_seed(0)
    _, architecture, supernet, _ = search(space, [], count=8)
    assert {f'cell/op{i}' for i in range(1, 6)} | {f'cell/input{i}' for i in range(1, 7)} == set(architecture)
    assert all(architecture[f'cell/op{i}'] in ('conv3x3-bn-relu', 'conv1x1-bn-relu', 'maxpool3x3')
               for i in range(1, 6))


def test_exact_mode_refuses_what_nnis_proxylessnas_cannot_search():
    from value_spaces import cell_space

    with pytest.raises(ValueError, match=r"exact=True reproduces NNI .* searches no cells nor depth expressions"):
        search(cell_space(), [], shape=(64,), exact=True)
