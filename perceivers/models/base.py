"""What every model class shares: config check, initialisation unless on meta, parameter count, saving,
and registration of its ``model_type``.

A family's model is ``class PerceiverAR(PerceiverModel, model_type="perceiver_ar"): config_class = ...``; its
``__init__`` calls ``super().__init__(config)``, declares modules, and ends with :meth:`init_weights_unless_meta`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from perceivers.core.registry import register_model_type
from perceivers.core.validation import check_finite
from perceivers.models.hub import save_pretrained


def check_input_dtype(x: torch.Tensor, name: str, param_dtype: torch.dtype) -> None:
    """``TypeError`` unless the floating input ``x`` has the parameters' dtype, or, under ``torch.autocast`` on its
    device, the autocast dtype (autocast mixes those two itself; a float64 input is refused under autocast too)."""
    allowed = [param_dtype]
    if torch.is_autocast_enabled(x.device.type):
        allowed.append(torch.get_autocast_dtype(x.device.type))
    if x.dtype not in allowed:
        under = f" or {allowed[1]} (the autocast dtype)" if len(allowed) > 1 else ""
        raise TypeError(f"{name} dtype is {x.dtype} but the model parameters are {param_dtype}{under}; "
                        f"convert the inputs (x.to({param_dtype})) or the model")


def check_finite_inputs(**inputs: Any) -> None:
    """``ConfigError`` naming the first NaN or infinite value among the floating tensors of ``inputs`` (keyword
    arguments of a forward pass; dicts of tensors such as HiP's ``inputs`` are walked), e.g.
    ``inputs['image'][0, 3, 1] is nan: expected finite values``.

    A forward pass does not check its inputs for NaN or infinity: that needs a host read of a device value on
    every call. Call this where data enters (the command line and the training recipes' data paths do)."""
    for name, value in inputs.items():
        if isinstance(value, dict):
            check_finite_inputs(**{f"{name}[{key!r}]": v for key, v in value.items()})
        elif (isinstance(value, torch.Tensor) and value.is_floating_point() and not value.is_meta
              and not bool(torch.isfinite(value).all())):
            check_finite(name, value)


def _first_tensor(values: Any) -> torch.Tensor | None:
    for v in values:
        if isinstance(v, torch.Tensor):
            return v
        if isinstance(v, dict):
            found = _first_tensor(v.values())
            if found is not None:
                return found
    return None


def _refuse_meta_weights(module: nn.Module, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook: a model whose parameters live on the meta device (built with ``device="meta"``) cannot
    compute on real inputs. Meta inputs stay allowed (shape inference). One parameter is read: no device sync."""
    p = next(module.parameters(), None)
    if p is None or not p.is_meta:
        return
    x = _first_tensor([*args, *kwargs.values()])
    if x is not None and not x.is_meta:
        raise ValueError(f"{type(module).__name__} has its parameters on the meta device (built with device='meta' "
                         "or from a meta config) and cannot run on real inputs: call model.to_empty(device=...) then "
                         "model.init_weights(), or load weights (from_pretrained, or load_state_dict(state, "
                         "assign=True)) first")


class PerceiverModel(nn.Module):
    """Base of every model class (a pure single-device ``nn.Module``).

    Subclasses set ``config_class`` and pass ``model_type="..."`` in the class statement to be rebuilt by
    :func:`perceivers.from_pretrained`; a subclass without ``model_type`` inherits its parent's. Each config class
    has ``debug_size()`` (the same structure at test size) and each model ``example_inputs()``, so every
    registered variant runs in the registry-driven tests.
    """

    config_class: ClassVar[type]
    model_type: ClassVar[str]

    def __init_subclass__(cls, *, model_type: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if model_type is not None:
            cls.model_type = model_type
            register_model_type(model_type, cls)

    def __init__(self, config: Any) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"config must be a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        self.register_forward_pre_hook(_refuse_meta_weights, with_kwargs=True)

    def init_weights(self) -> None:
        """Apply the official initialisation to every parameter (subclasses implement it)."""
        raise NotImplementedError

    def example_inputs(self, batch_size: int = 2, *, generator: torch.Generator | None = None) -> dict[str, Any]:
        """Random valid keyword arguments of ``forward`` on the model's device and dtype (``model(**kwargs)``):
        for tests, benchmarks and export. Subclasses implement it."""
        raise NotImplementedError

    def init_weights_unless_meta(self) -> None:
        """Call :meth:`init_weights` unless the parameters live on the meta device (built without memory)."""
        if not any(p.is_meta for p in self.parameters()):
            self.init_weights()

    def num_parameters(self) -> int:
        """Every parameter, frozen ones included (the official counts); buffers such as BatchNorm running
        statistics are not parameters and are not counted."""
        return sum(p.numel() for p in self.parameters())

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write ``config.json`` and ``model.safetensors`` to ``save_directory`` (see
        :func:`perceivers.models.hub.save_pretrained`)."""
        return save_pretrained(self, save_directory)
