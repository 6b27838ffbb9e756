"""Shared by the tests of the C++ extension's ops (test_cuda_backend.py on CPU, test_cuda_gpu.py
on a GPU): the ops with keyword arguments and small inputs for them."""

import torch
from conftest import order2_inputs

OPS = torch.ops.sobolev_kernels
TARGETS = ["grad", "jvp", "teacher"]
TARGETS2 = ["hess", "hvp2", "teacher"]  # order 2: target_hess, target_hvp2 or a teacher's w
DIRECTIONS = ["sampled", "shared", "per_row", "full"]
ORDER2 = dict(order=2, alpha=0.6, beta=1.7, gamma=0.8)


def order2_case(target, directions, **kwargs):
    if target == "hvp2" and directions == "sampled":
        directions = "per_row"  # projected targets need explicit directions
    return order2_inputs(target, directions=directions, **kwargs)


def op_inputs(shared: bool, bias: bool, order: int = 1, seed: int = 0):
    """x (5, 3), directions, the op's targets (y, target_grad and, order 2, target_hess),
    weights and biases of a 3 -> 6 -> 4 -> 2 MLP, in fp64."""
    gen = torch.Generator().manual_seed(seed)

    def r(*s, grad=False):
        return torch.randn(*s, generator=gen, dtype=torch.float64).requires_grad_(grad)

    x = r(5, 3, grad=True)
    dirs = r(2, 3) if shared else r(5, 2, 3)
    weights = [r(6, 3, grad=True), r(4, 6, grad=True), r(2, 4, grad=True)]
    biases = [r(6, grad=True), r(4, grad=True), r(2, grad=True)] if bias else []
    targets = dict(y=r(5, 2), target_grad=r(5, 2, 3))
    if order == 2:
        hess = r(5, 2, 3, 3)
        targets["target_hess"] = hess + hess.transpose(-1, -2)
    return x, dirs, targets, weights, biases


def forward_op(x, dirs, weights, biases, *, y=None, target_jvp=None, target_grad=None,
                target_hvp2=None, target_hess=None, activation=0, negative_slope=0.0,
                alpha=0.6, beta=1.7, gamma=0.8, order=1, save=True):  # fmt: skip
    """sobolev_forward with keyword arguments: (loss, f, u, w, saved)."""
    return OPS.sobolev_forward(x, dirs, y, target_jvp, target_grad, target_hvp2, target_hess,
                               weights, biases, activation, negative_slope, alpha, beta, gamma,
                               order, False, save)  # fmt: skip


def backward_args(grads, x, dirs, weights, biases, outputs, *, y=None, target_jvp=None,
                   target_grad=None, target_hvp2=None, target_hess=None, activation=0,
                   negative_slope=0.0, alpha=0.6, beta=1.7, gamma=0.8, order=1,
                   need_x=True, need_params=True):  # fmt: skip
    """sobolev_backward's arguments; grads = (grad_loss, grad_f, grad_u, grad_w), outputs =
    the forward's (loss, f, u, w, saved)."""
    _, f, u, w, saved = outputs
    return (*grads, x, dirs, y, target_jvp, target_grad, target_hvp2, target_hess, weights,
            biases, f, u, w, saved, activation, negative_slope, alpha, beta, gamma, order,
            False, need_x, need_params)  # fmt: skip
