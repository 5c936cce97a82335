"""An identity autograd Function that hands all its outputs' gradients to one hook at once.

Used by the Rust core for layers whose candidates return several tensors: a plain tensor hook
sees one gradient at a time, and ``torch.autograd.graph.register_multi_grad_hook`` keeps the
graph in a reference cycle (its closures hold the grad_fns) until the garbage collector runs.
"""

import torch


class GradientTap(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hook, *tensors):
        ctx.hook = hook
        ctx.set_materialize_grads(False)  # unused outputs give None, as in a full backward hook
        return tensors

    @staticmethod
    def backward(ctx, *grads):
        ctx.hook(grads)
        return (None, *grads)
