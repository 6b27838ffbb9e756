"""Public entry points: ``sobolev_loss``, ``SobolevLoss``, ``mlp_jvp``.

This is the only module that validates user input and picks a backend. Every error names the
argument at fault and what was expected; nothing the caller passed is modified (targets and
directions are detached, never written to).
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from . import backends
from .directions import full_directions, sample_directions
from .mlp import SobolevMLP
from .problem import SobolevProblem

__all__ = ["sobolev_loss", "SobolevLoss", "SobolevObjective", "mlp_jvp"]

_FLOATS = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
Model = Callable[[Tensor], Tensor]


def sobolev_loss(
    model: Model,
    x: Tensor,
    y: Tensor | None,
    *,
    target_grad: Tensor | None = None,
    target_jvp: Tensor | None = None,
    teacher: Model | None = None,
    directions: Tensor | str | None = None,
    num_directions: int = 1,
    alpha: float = 1.0,
    beta: float = 1.0,
    generator: torch.Generator | None = None,
    backend: str = "auto",
    return_outputs: bool = False,
    order: int = 1,
    gamma: float = 1.0,
    target_hess: Tensor | None = None,
    target_hvp2: Tensor | None = None,
    check_finite: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Sobolev loss ``alpha * mse(f(x), y) + beta * mse(J_f(x) v, J_g(x) v)``.

    Args:
        model: a ``SobolevMLP`` (fused backends), an ``nn.Sequential`` of Linear/activation
            layers (adopted as a SobolevMLP), or any module/callable mapping rows ``(B, d)`` to
            ``(B, m)`` independently (``reference`` backend).
        x: ``(B, d)`` inputs; gets a gradient if it requires one.
        y: ``(B, m)`` target values (``(B,)`` when m == 1), or None to drop the value term.
        target_grad: ``(B, m, d)`` target Jacobians (``(B, d)`` when m == 1), or
        target_jvp: ``(B, K, m)`` targets already projected on ``directions``, or
        teacher: a module/callable whose JVPs along the directions are the targets.
            Exactly one of the three. Targets are constants: they receive no gradient.
        directions: None (sample ``num_directions`` per row, uniform on the unit sphere, from
            ``generator``), a ``(K, d)`` tensor shared by all rows, a ``(B, K, d)`` tensor, or
            ``"full"`` (the d basis vectors: full Jacobian matching).
        alpha, beta: weights of the value and derivative terms (finite, >= 0). The derivative
            term is a mean over rows, directions and outputs; for unit directions uniform on
            the sphere, E[(v^T e)^2] = |e|^2 / d, so it estimates ||J_f - J_g||_F^2 / (d m),
            exactly what ``directions="full"`` computes. To weigh the squared Frobenius
            error of each row's Jacobian against the value error, use ``beta = d``.
        backend: ``"auto"`` or one of ``available_backends()``.
        return_outputs: also return ``f (B, m)``, differentiable, for a user's own value loss.
        order: 1, or 2 to add ``gamma * mse(v^T H_f v, v^T H_g v)``, the second directional
            derivatives along the same directions (for every output). With
            ``directions="full"`` that matches the diagonal of the Hessians.
        gamma: weight of the second-order term (order 2).
        target_hess: ``(B, m, d, d)`` target Hessians (``(B, d, d)`` when m == 1), or
        target_hvp2: ``(B, K, m)`` target ``v_k^T H_g v_k`` along ``directions``; order 2 needs
            exactly one of them, or a ``teacher`` (which then gives both orders).
        check_finite: raise a ``ValueError`` naming the first input (or parameter) holding a
            NaN or inf. Off by default (it synchronises); non-finite values always propagate
            to a non-finite loss, never to a silent 0.

    Under ``torch.autocast`` an fp32 MLP runs its GEMMs in the autocast dtype (bf16/fp16),
    accumulating in fp32; the loss is fp32 and the gradients reach the fp32 parameters.

    Returns:
        The 0-dim loss (fp32 for bf16/fp16 inputs), or ``(loss, f)``.
    """
    _check_flag("return_outputs", return_outputs)
    _check_flag("check_finite", check_finite)
    problem = _build_problem(
        model, x, y,
        target_grad=target_grad, target_jvp=target_jvp, teacher=teacher,
        directions=directions, num_directions=num_directions,
        alpha=alpha, beta=beta, generator=generator, backend=backend,
        order=order, gamma=gamma, target_hess=target_hess, target_hvp2=target_hvp2,
    )  # fmt: skip
    if check_finite:
        _check_finite(problem)
    module = backends.select(backend, problem)
    with _precision_scope(problem, module):
        loss, f = module.sobolev_loss(problem)
    return (loss, f) if return_outputs else loss


def mlp_jvp(
    model: Model, x: Tensor, directions: Tensor | str, *, backend: str = "auto", order: int = 1
) -> tuple[Tensor, ...]:
    """Forward pass and directional derivatives: ``(f, u)``, or ``(f, u, w)`` for order 2.

    ``f (B, m)``; ``u[:, k] = J_f(x) v_k`` and ``w[:, k] = v_k^T H_f(x) v_k``, both
    ``(B, K, m)``. ``directions`` is ``(K, d)`` shared, ``(B, K, d)`` per row, or ``"full"``.
    Every output is differentiable w.r.t. the model's parameters and ``x``.
    """
    _check_backend(backend)
    order = _check_order(order)
    model, mlp = _check_model(model, "model")
    x = _check_x(x, mlp, model)
    dirs = _resolve_directions(directions, 1, None, x, explicit=True)
    problem = _under_autocast(
        SobolevProblem(model=model, mlp=mlp, x=x, y=None, directions=dirs, order=order)
    )
    module = backends.select(backend, problem)
    with _precision_scope(problem, module):
        return module.mlp_jvp(problem)


class SobolevLoss(nn.Module):
    """Module form of ``sobolev_loss`` holding the weights, K, directions, order and backend.

    ``forward(model, x, y, target_grad=..., target_jvp=..., teacher=..., target_hess=...,
    target_hvp2=..., directions=...)`` with the same meaning as ``sobolev_loss``;
    ``directions`` given to forward overrides the one given here.
    """

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 1.0,
        num_directions: int = 1,
        directions: Tensor | str | None = None,
        backend: str = "auto",
        generator: torch.Generator | None = None,
        return_outputs: bool = False,
        order: int = 1,
        gamma: float = 1.0,
        check_finite: bool = False,
    ) -> None:
        super().__init__()
        self.check_finite = _check_flag("check_finite", check_finite)
        self.alpha = _check_weight("alpha", alpha)
        self.beta = _check_weight("beta", beta)
        self.gamma = _check_weight("gamma", gamma)
        self.order = _check_order(order)
        self.num_directions = _check_num_directions(num_directions)
        if directions is not None and not isinstance(directions, Tensor) and directions != "full":
            raise ValueError(f"directions: expected None, a tensor or 'full', got {directions!r}")
        self.directions = directions
        self.backend = _check_backend(backend)
        self.generator = _check_generator(generator)
        self.return_outputs = _check_flag("return_outputs", return_outputs)

    def forward(
        self,
        model: Model,
        x: Tensor,
        y: Tensor | None = None,
        *,
        target_grad: Tensor | None = None,
        target_jvp: Tensor | None = None,
        teacher: Model | None = None,
        target_hess: Tensor | None = None,
        target_hvp2: Tensor | None = None,
        directions: Tensor | str | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        return sobolev_loss(
            model, x, y,
            target_grad=target_grad, target_jvp=target_jvp, teacher=teacher,
            target_hess=target_hess, target_hvp2=target_hvp2,
            directions=self.directions if directions is None else directions,
            num_directions=self.num_directions, alpha=self.alpha, beta=self.beta,
            gamma=self.gamma, order=self.order, generator=self.generator,
            backend=self.backend, return_outputs=self.return_outputs,
            check_finite=self.check_finite,
        )  # fmt: skip

    def extra_repr(self) -> str:
        second = f", gamma={self.gamma}, order=2" if self.order == 2 else ""
        return (
            f"alpha={self.alpha}, beta={self.beta}{second}, "
            f"num_directions={self.num_directions}, backend={self.backend!r}"
        )


class SobolevObjective(nn.Module):
    """A model and its Sobolev loss as one module: ``forward(x, y, **targets) -> loss``.

    Wrap this (not the bare model) in ``DistributedDataParallel`` or FSDP: their gradient
    synchronisation is armed by the wrapper's forward, which here computes the loss::

        objective = DDP(sk.SobolevObjective(mlp, sk.SobolevLoss(beta=2.0, num_directions=4)))
        loss = objective(x, y, target_grad=dy)
        loss.backward()

    Its parameters are the model's. ``forward`` takes the keyword arguments of
    ``SobolevLoss.forward``.
    """

    def __init__(self, model: nn.Module, loss: SobolevLoss | None = None) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        if loss is not None and not isinstance(loss, SobolevLoss):
            raise TypeError(f"loss: expected a SobolevLoss, got {type(loss).__name__}")
        self.model = model
        self.loss = loss if loss is not None else SobolevLoss()

    def forward(self, x: Tensor, y: Tensor | None = None, **targets: Any):
        return self.loss(self.model, x, y, **targets)


# --------------------------------------------------------------------------- validation


def _build_problem(
    model: Any,
    x: Any,
    y: Any,
    *,
    target_grad: Any,
    target_jvp: Any,
    teacher: Any,
    directions: Any,
    num_directions: Any,
    alpha: Any,
    beta: Any,
    generator: Any,
    backend: Any,
    order: Any = 1,
    gamma: Any = 1.0,
    target_hess: Any = None,
    target_hvp2: Any = None,
) -> SobolevProblem:
    _check_backend(backend)
    order = _check_order(order)
    alpha = _check_weight("alpha", alpha)
    beta = _check_weight("beta", beta)
    gamma = _check_weight("gamma", gamma)
    generator = _check_generator(generator)
    model, mlp = _check_model(model, "model")
    x = _check_x(x, mlp, model)
    batch, dim = x.shape

    _check_target_forms(order, target_grad, target_jvp, teacher, target_hess, target_hvp2)
    for name, value in (("target_jvp", target_jvp), ("target_hvp2", target_hvp2)):
        if value is not None and directions is None:
            raise ValueError(
                f"{name}: targets projected on directions need those directions; pass "
                "directions=(K, d) or (B, K, d) tensor or 'full'"
            )
    dirs = _resolve_directions(directions, num_directions, generator, x, explicit=False)
    k = dirs.shape[-2]

    # m, the number of outputs: from the MLP, else from the targets given.
    m = mlp.out_features if mlp is not None else _infer_outputs(
        y, target_grad, target_jvp, target_hess, target_hvp2
    )  # fmt: skip

    def one_output(*shape):  # (B, m, ...), and (B, ...) when m == 1
        return [(batch, *shape)] + ([(batch, *shape[1:])] if m == 1 else [])

    if y is not None:
        y = _check_tensor("y", y, x, one_output(m)).reshape(batch, m)
    grad_t = jvp_t = hess_t = hvp2_t = None
    if target_grad is not None:
        grad_t = _check_tensor("target_grad", target_grad, x, one_output(m, dim))
        grad_t = grad_t.reshape(batch, m, dim)
    elif target_jvp is not None:
        jvp_t = _check_tensor("target_jvp", target_jvp, x, [(batch, k, m)]
                              + ([(batch, k)] if m == 1 else []))  # fmt: skip
        jvp_t = jvp_t.reshape(batch, k, m)
    if target_hess is not None:
        hess_t = _check_tensor("target_hess", target_hess, x, one_output(m, dim, dim))
        hess_t = hess_t.reshape(batch, m, dim, dim)
    elif target_hvp2 is not None:
        hvp2_t = _check_tensor("target_hvp2", target_hvp2, x, [(batch, k, m)]
                               + ([(batch, k)] if m == 1 else []))  # fmt: skip
        hvp2_t = hvp2_t.reshape(batch, k, m)
    if teacher is not None:
        jvp_t, *second = _teacher_jvp(teacher, x, dirs, m, backend, order)
        hvp2_t = second[0] if second else None

    return _under_autocast(SobolevProblem(
        model=model, mlp=mlp, x=x, y=y, directions=dirs,
        target_jvp=jvp_t, target_grad=grad_t, alpha=alpha, beta=beta,
        order=order, target_hvp2=hvp2_t, target_hess=hess_t, gamma=gamma,
    ))  # fmt: skip


def _under_autocast(problem: SobolevProblem) -> SobolevProblem:
    """Under torch.autocast, an fp32 MLP's fused path computes in the autocast dtype.

    x, the directions and the parameters are cast (differentiably, so fp32 gradients flow
    back); targets keep their dtype, the kernels read them into fp32 accumulators.
    """
    device = problem.device.type
    if problem.mlp is None or problem.dtype != torch.float32:
        return problem
    if not torch.is_autocast_enabled(device):
        return problem
    amp = torch.get_autocast_dtype(device)
    problem.x = problem.x.to(amp)
    problem.directions = problem.directions.to(amp)
    problem.weights = [w.to(amp) for w in problem.weights]
    problem.biases = [b.to(amp) for b in problem.biases]
    problem.autocast = True
    return problem


def _precision_scope(problem: SobolevProblem, module: Any):
    """Fused backends run on the already-cast tensors with autocast off; the reference runs
    the user's module, which autocast itself must cast."""
    if problem.autocast and module.NAME != "reference":
        return torch.autocast(problem.device.type, enabled=False)
    return contextlib.nullcontext()


def _check_finite(problem: SobolevProblem) -> None:
    named = [("x", problem.x), ("y", problem.y), ("target_grad", problem.target_grad),
             ("target_jvp", problem.target_jvp), ("target_hess", problem.target_hess),
             ("target_hvp2", problem.target_hvp2), ("directions", problem.directions)]  # fmt: skip
    if isinstance(problem.model, nn.Module):
        named += [(f"model parameter {n!r}", p) for n, p in problem.model.named_parameters()]
    for name, t in named:
        if t is not None and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name}: contains NaN or inf (check_finite=True)")


def _check_target_forms(order, target_grad, target_jvp, teacher, target_hess, target_hvp2):
    """Exactly one first-order target; for order 2 exactly one second-order one (a teacher
    gives both); no second-order target for order 1."""
    first = [n for n, v in (("target_grad", target_grad), ("target_jvp", target_jvp),
                            ("teacher", teacher)) if v is not None]  # fmt: skip
    if len(first) != 1:
        raise ValueError(
            "target_grad/target_jvp/teacher: expected exactly one derivative target, got "
            + (", ".join(first) if first else "none")
        )
    second = [n for n, v in (("target_hess", target_hess), ("target_hvp2", target_hvp2))
              if v is not None]  # fmt: skip
    if order == 1 and second:
        raise ValueError(f"{second[0]}: second-order targets need order=2")
    if order == 2:
        if teacher is not None and second:
            raise ValueError(
                f"{second[0]}: with teacher= the second-order targets come from the teacher"
            )
        if teacher is None and len(second) != 1:
            raise ValueError(
                "target_hess/target_hvp2: order=2 needs exactly one second-order target (or a "
                "teacher), got " + (", ".join(second) if second else "none")
            )


def _check_backend(backend: Any) -> str:
    if not isinstance(backend, str) or (backend != "auto" and backend not in backends.BACKENDS):
        raise ValueError(
            f"backend: unknown backend {backend!r}; expected 'auto' or one of "
            f"{list(backends.BACKENDS)}"
        )
    return backend


def _check_order(order: Any) -> int:
    if isinstance(order, bool) or order not in (1, 2):
        raise ValueError(f"order: expected 1 or 2, got {order!r}")
    return int(order)


def _check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
    return value


def _check_weight(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected a finite number >= 0, got {value}")
    return value


def _check_num_directions(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"num_directions: expected an int >= 1, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"num_directions: expected an int >= 1 (K), got {value}")
    return int(value)


def _check_generator(generator: Any) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
    return generator


def _check_model(model: Any, name: str) -> tuple[Model, SobolevMLP | None]:
    """The callable to run and, when the fused path can take it, its SobolevMLP form."""
    if not callable(model):
        raise TypeError(f"{name}: expected an nn.Module or callable, got {type(model).__name__}")
    if isinstance(model, nn.parallel.DistributedDataParallel):
        # its reducer only syncs gradients of losses computed inside its own forward
        raise TypeError(
            f"{name}: got a DistributedDataParallel wrapper; wrap "
            "sobolev_kernels.SobolevObjective(model, loss) in DDP instead and call it"
        )
    if isinstance(model, SobolevMLP):
        return model, model
    if isinstance(model, nn.Sequential):
        try:
            return model, SobolevMLP.from_sequential(model)
        except TypeError:
            return model, None  # not an MLP stack: only the reference backend takes it
    return model, None


def _param_of(model: Model) -> Tensor | None:
    if isinstance(model, nn.Module):
        return next(iter(model.parameters()), None)
    return None


def _check_x(x: Any, mlp: SobolevMLP | None, model: Model) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor (B, d), got {type(x).__name__}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"x: expected a floating-point tensor (fp64/fp32/bf16/fp16), got {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"x: expected shape (B, d), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x: empty batch (B = 0)")
    if x.shape[1] == 0:
        raise ValueError("x: expected d >= 1 input features, got d = 0")
    if mlp is not None and x.shape[1] != mlp.in_features:
        raise ValueError(
            f"x: model takes {mlp.in_features} input features, got x of shape {tuple(x.shape)}"
        )
    param = _param_of(model)
    if param is not None:
        if param.device != x.device:
            raise ValueError(f"x: on {x.device}, but the model's parameters are on {param.device}")
        if param.dtype != x.dtype:
            raise TypeError(f"x: dtype {x.dtype}, but the model's parameters are {param.dtype}")
    return x.contiguous()


def _check_tensor(name: str, t: Any, x: Tensor, shapes: list[tuple[int, ...]]) -> Tensor:
    """A detached contiguous tensor on x's device and dtype, with one of ``shapes``."""
    expected = " or ".join(str(s) for s in shapes)
    if not isinstance(t, Tensor):
        raise TypeError(
            f"{name}: expected a torch.Tensor of shape {expected}, got {type(t).__name__}"
        )
    if t.dtype != x.dtype:
        raise TypeError(f"{name}: dtype {t.dtype} does not match x's dtype {x.dtype}")
    if t.device != x.device:
        raise ValueError(f"{name}: on {t.device}, but x is on {x.device}")
    if tuple(t.shape) not in shapes:
        raise ValueError(f"{name}: expected shape {expected}, got {tuple(t.shape)}")
    return t.detach().contiguous()


def _infer_outputs(y: Any, *targets: Any) -> int:
    """m for a model we cannot inspect, read off the targets (checked again after the run).

    targets: target_grad (B, m, d), target_jvp (B, K, m), target_hess (B, m, d, d),
    target_hvp2 (B, K, m), each possibly in its m == 1 shorthand.
    """
    if isinstance(y, Tensor):
        return y.shape[1] if y.ndim == 2 else 1
    full_ndim = (3, 3, 4, 3)
    m_axis = (1, 2, 1, 2)
    for t, ndim, axis in zip(targets, full_ndim, m_axis):
        if isinstance(t, Tensor):
            return t.shape[axis] if t.ndim == ndim else 1
    return -1  # teacher: taken from its output


def _resolve_directions(
    directions: Any, num_directions: Any, generator: torch.Generator | None, x: Tensor,
    *, explicit: bool,
) -> Tensor:  # fmt: skip
    batch, dim = x.shape
    k = _check_num_directions(num_directions)
    if directions is None and not explicit:
        return sample_directions(batch, k, dim, generator=generator, device=x.device, dtype=x.dtype)
    if isinstance(directions, str) and directions == "full":
        if k not in (1, dim):
            raise ValueError(
                f"num_directions: directions='full' uses K = d = {dim}, got num_directions={k}"
            )
        return full_directions(dim, device=x.device, dtype=x.dtype)
    if not isinstance(directions, Tensor):
        raise ValueError(
            "directions: expected a (K, d) or (B, K, d) tensor or 'full'"
            + ("" if explicit else " or None")
            + f", got {directions!r}"
        )
    shape = tuple(directions.shape)
    ok = (directions.ndim == 2 and shape[1] == dim) or (
        directions.ndim == 3 and shape[0] == batch and shape[2] == dim
    )
    if not ok or shape[-2] == 0:
        raise ValueError(
            f"directions: expected (K, {dim}) or ({batch}, K, {dim}) with K >= 1, got {shape}"
        )
    if k not in (1, shape[-2]):
        raise ValueError(f"num_directions: {k} does not match the {shape[-2]} directions given")
    return _check_tensor("directions", directions, x, [shape])


def _teacher_jvp(
    teacher: Any, x: Tensor, dirs: Tensor, m: int, backend: str, order: int
) -> tuple[Tensor, ...]:
    """The teacher's directional derivatives along ``dirs``: u (B, K, m), and w for order 2,
    computed without a graph."""
    teacher, teacher_mlp = _check_model(teacher, "teacher")
    param = _param_of(teacher)
    if param is not None and (param.device != x.device or param.dtype != x.dtype):
        raise ValueError(
            f"teacher: parameters are {param.dtype} on {param.device}, x is {x.dtype} on {x.device}"
        )
    if teacher_mlp is not None and teacher_mlp.in_features != x.shape[1]:
        raise ValueError(
            f"teacher: takes {teacher_mlp.in_features} input features, x has {x.shape[1]}"
        )
    problem = SobolevProblem(
        model=teacher, mlp=teacher_mlp, x=x.detach(), y=None, directions=dirs, order=order
    )
    # Any teacher is fine: its JVPs need no graph, so reference costs one forward-mode pass and
    # is no reason to warn; an explicitly chosen backend that cannot take it runs the student.
    chosen = backend
    if teacher_mlp is None:
        chosen = "reference"
    elif backend != "auto" and not backends.can_run(backend, problem):
        chosen = "reference"
    with torch.no_grad():
        f, *derivatives = backends.select(chosen, problem).mlp_jvp(problem)
    if m != -1 and f.shape[-1] != m:
        raise ValueError(f"teacher: returns {f.shape[-1]} outputs, the model {m}")
    return tuple(d.detach().contiguous() for d in derivatives)
