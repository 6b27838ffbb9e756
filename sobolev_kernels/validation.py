"""The one validator of user input: every public entry point builds its ``SobolevProblem``
here. Every error names the argument at fault and what was expected; nothing the caller
passed is modified (targets and directions are detached, never written to)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from . import backends, memory, settings
from .directions import full_directions, sample_directions
from .mlp import SobolevMLP
from .problem import SobolevProblem

__all__ = [
    "Model",
    "build_problem",
    "check_backend",
    "check_finite",
    "check_flag",
    "check_generator",
    "check_memory",
    "check_model",
    "check_num_directions",
    "check_order",
    "check_weight",
    "check_x",
    "resolve_directions",
]

_FLOATS = (torch.float64, torch.float32, torch.bfloat16, torch.float16)
Model = Callable[[Tensor], Tensor]


def build_problem(
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
    check_backend(backend)
    order = check_order(order)
    alpha = check_weight("alpha", alpha)
    beta = check_weight("beta", beta)
    gamma = check_weight("gamma", gamma)
    generator = check_generator(generator)
    model, mlp, why_unfused = check_model(model, "model")
    x = check_x(x, mlp, model)
    batch, dim = x.shape

    _check_target_forms(order, target_grad, target_jvp, teacher, target_hess, target_hvp2)
    for name, value in (("target_jvp", target_jvp), ("target_hvp2", target_hvp2)):
        if value is not None and directions is None:
            raise ValueError(
                f"{name}: targets projected on directions need those directions; pass "
                "directions=(K, d) or (B, K, d) tensor or 'full'"
            )
    dirs = resolve_directions(
        directions, num_directions, generator, x, explicit=False, mlp=mlp, order=order
    )
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

    return SobolevProblem(
        model=model, mlp=mlp, x=x, y=y, directions=dirs,
        target_jvp=jvp_t, target_grad=grad_t, alpha=alpha, beta=beta,
        order=order, target_hvp2=hvp2_t, target_hess=hess_t, gamma=gamma,
        model_reason=why_unfused,
    ).cast_for_autocast()  # fmt: skip


def check_finite(problem: SobolevProblem) -> None:
    named = [("x", problem.x), ("y", problem.y), ("target_grad", problem.target_grad),
             ("target_jvp", problem.target_jvp), ("target_hess", problem.target_hess),
             ("target_hvp2", problem.target_hvp2), ("directions", problem.directions)]  # fmt: skip
    if isinstance(problem.model, nn.Module):
        named += [(f"model parameter {n!r}", p) for n, p in problem.model.named_parameters()]
    for name, t in named:
        if t is not None and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name}: contains NaN or inf (check_finite=True)")
    _check_nonzero(problem.directions, on_gpu=True)


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


def check_backend(backend: Any) -> str:
    if not isinstance(backend, str) or (backend != "auto" and backend not in backends.BACKENDS):
        raise ValueError(
            f"backend: unknown backend {backend!r}; expected 'auto' or one of "
            f"{list(backends.BACKENDS)}"
        )
    return backend


def check_order(order: Any) -> int:
    if isinstance(order, bool) or order not in (1, 2):
        raise ValueError(f"order: expected 1 or 2, got {order!r}")
    return int(order)


def check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
    return value


def check_weight(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected a finite number >= 0, got {value}")
    return value


def check_num_directions(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"num_directions: expected an int >= 1, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"num_directions: expected an int >= 1 (K), got {value}")
    return int(value)


def check_generator(generator: Any) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")
    return generator


def check_model(model: Any, name: str) -> tuple[Model, SobolevMLP | None, str | None]:
    """The callable to run; its SobolevMLP form when the fused path can take it, else None
    and why not (a sentence naming the module at fault, for the fallback warning).

    ``torch.compile``'d modules and ``nn.DataParallel`` are unwrapped: the module inside
    shares their parameters, and the fused kernels replace both the compiled graph and the
    scatter (the loss runs on the device of the module's parameters).
    """
    if not callable(model):
        raise TypeError(f"{name}: expected an nn.Module or callable, got {type(model).__name__}")
    if type(model) is SobolevMLP:  # the common case, at once (a training step's host time)
        return model, model, None
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            # its reducer only syncs gradients of losses computed inside its own forward
            raise TypeError(
                f"{name}: got a DistributedDataParallel wrapper; wrap "
                "sobolev_kernels.SobolevObjective(model, loss) in DDP instead and call it"
            )
        if isinstance(model, nn.DataParallel):
            model = model.module
        elif isinstance(model, nn.Module) and isinstance(getattr(model, "_orig_mod", None),
                                                          nn.Module):  # fmt: skip
            model = model._orig_mod  # torch.compile's OptimizedModule
        else:
            break
    if isinstance(model, SobolevMLP):
        return model, model, None
    if isinstance(model, nn.Sequential):
        try:
            return model, SobolevMLP.from_sequential(model), None
        except TypeError as error:  # not an MLP stack: only the reference backend takes it
            where, _, why = str(error).partition(": ")
            return model, None, why if where != "sequential" else f"the Sequential: {why}"
    if isinstance(model, nn.Module):
        return model, None, (
            f"{type(model).__name__} is neither a SobolevMLP nor an nn.Sequential of Linear "
            "and activation layers"
        )  # fmt: skip
    what = getattr(model, "__qualname__", type(model).__name__)
    return model, None, f"{what} is a plain callable, not a SobolevMLP or an nn.Sequential"


def _param_of(model: Model, mlp: SobolevMLP | None = None) -> Tensor | None:
    if mlp is not None:  # (its first weight: no walk over the module tree every step)
        return mlp.weights()[0]
    if isinstance(model, nn.Module):
        return next(iter(model.parameters()), None)
    return None


def check_x(x: Any, mlp: SobolevMLP | None, model: Model) -> Tensor:
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
    param = _param_of(model, mlp)
    if param is not None:
        if param.device != x.device:
            raise ValueError(f"x: on {x.device}, but the model's parameters are on {param.device}")
        if param.dtype != x.dtype:
            raise TypeError(f"x: dtype {x.dtype}, but the model's parameters are {param.dtype}")
    return x.contiguous()


def _check_tensor(name: str, t: Any, x: Tensor, shapes: list[tuple[int, ...]]) -> Tensor:
    """A detached contiguous tensor on x's device and dtype, with one of ``shapes``."""
    if not isinstance(t, Tensor):
        raise TypeError(
            f"{name}: expected a torch.Tensor of shape {_either(shapes)}, got {type(t).__name__}"
        )
    if t.dtype != x.dtype:
        raise TypeError(f"{name}: dtype {t.dtype} does not match x's dtype {x.dtype}")
    if t.device != x.device:
        raise ValueError(f"{name}: on {t.device}, but x is on {x.device}")
    if tuple(t.shape) not in shapes:
        raise ValueError(f"{name}: expected shape {_either(shapes)}, got {tuple(t.shape)}")
    return t.detach().contiguous()


def _either(shapes: list[tuple[int, ...]]) -> str:
    return " or ".join(str(s) for s in shapes)  # (formatted for errors only: a step is hot)


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


def resolve_directions(
    directions: Any, num_directions: Any, generator: torch.Generator | None, x: Tensor,
    *, explicit: bool, mlp: SobolevMLP | None = None, order: int = 1,
) -> Tensor:  # fmt: skip
    """The directions tensor, (K, d) or (B, K, d); raises before drawing or running anything
    whose buffers cannot fit (``check_memory``), and for a zero direction."""
    batch, dim = x.shape
    k = check_num_directions(num_directions)
    if directions is None and not explicit:
        check_memory(mlp, x, k, order, new_directions=True)
        return sample_directions(batch, k, dim, generator=generator, device=x.device, dtype=x.dtype)
    if isinstance(directions, str) and directions == "full":
        if k not in (1, dim):
            raise ValueError(
                f"num_directions: directions='full' uses K = d = {dim}, got num_directions={k}"
            )
        check_memory(mlp, x, dim, order, new_directions=False)
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
    directions = _check_tensor("directions", directions, x, [shape])
    _check_nonzero(directions)
    check_memory(mlp, x, shape[-2], order, new_directions=False)
    return directions


def _can_synchronise(device: torch.device) -> bool:
    """Whether a check may read values back here: not while torch.compile traces or a CUDA
    graph is captured, and not for meta tensors (which have none)."""
    if device.type == "meta" or torch.compiler.is_compiling():
        return False
    return device.type != "cuda" or not torch.cuda.is_current_stream_capturing()


def _check_nonzero(directions: Tensor, *, on_gpu: bool = False) -> None:
    """A zero direction has a zero derivative on both sides: its term would silently vanish.
    One reduction. On a GPU it would synchronise every step (a step can be host-bound: the
    H200 run, 2026-11-26), so there it runs with ``check_finite=True`` only (``on_gpu``);
    skipped where ``_can_synchronise`` says."""
    if (directions.is_cuda and not on_gpu) or not _can_synchronise(directions.device):
        return
    zero = (directions == 0).all(-1)  # (K,) or (B, K)
    if bool(zero.any()):
        where = "directions[" + ", ".join(str(int(i)) for i in zero.nonzero()[0]) + "]"
        raise ValueError(
            f"directions: {where} is the zero vector, which would make its derivative term "
            f"vanish ({int(zero.sum())} zero directions in all); give nonzero directions (they "
            "need not be unit vectors), or directions=None to sample unit ones"
        )


# Below this, a failed allocation costs little and the check (which synchronises a GPU) more.
MEMORY_CHECK_BYTES = 1 << 30


def check_memory(
    mlp: SobolevMLP | None, x: Tensor, k: int, order: int, *, new_directions: bool
) -> None:
    """Raise a ValueError naming ``num_directions`` when the least this evaluation needs
    (``memory.required_bytes``) exceeds what x's device can give, before allocating it. The
    saved pre-activations count only where a backward will follow and the fused forward keeps
    them (``settings.save_activations``); where they alone make the difference, the error
    says how to keep none."""
    params = (*mlp.weights(), *(mlp.biases() or ())) if mlp is not None else ()
    wanted = x.requires_grad or any(p.requires_grad for p in params)  # gradients: a backward
    saves = torch.is_grad_enabled() and wanted and settings.save_activations()
    need = memory.required_bytes(mlp, x, k, order, new_directions=new_directions, saves=saves)
    if need < MEMORY_CHECK_BYTES or not _can_synchronise(x.device):
        return
    available = memory.available_bytes(x.device)
    if available is not None and need > available:
        batch, dim = x.shape
        unsaved = memory.required_bytes(mlp, x, k, order, new_directions=new_directions,
                                        saves=False)  # fmt: skip
        hint = ("; or keep no hidden pre-activations for the backward, which then recomputes "
                "them a chunk of rows at a time (SOBOLEV_SAVE_ACTIVATIONS=0: both fused "
                "backends, more time)" if saves and unsaved <= available else "")  # fmt: skip
        raise ValueError(
            f"num_directions: K = {k} directions for B = {batch} rows of d = {dim} need at "
            f"least {need} bytes ({need / 2**30:.1f} GiB) on {x.device}, but {available} bytes "
            f"({available / 2**30:.1f} GiB) are available; use fewer directions or a smaller "
            f"batch{hint}"
        )


def _teacher_jvp(
    teacher: Any, x: Tensor, dirs: Tensor, m: int, backend: str, order: int
) -> tuple[Tensor, ...]:
    """The teacher's directional derivatives along ``dirs``: u (B, K, m), and w for order 2,
    computed without a graph."""
    teacher, teacher_mlp, _ = check_model(teacher, "teacher")
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
