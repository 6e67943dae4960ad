"""What the converters of the other PyTorch ports share (:mod:`~perceivers.converters.lucidrains`,
:mod:`~perceivers.converters.krasserm`): reading a ``state_dict`` file without unpickling code, the peer's
constructor settings, a key table with named tensor transforms applied strictly, and loading the result.

A table row is ``(their_key, our_key, transform)``; a transform maps the peer's tensor to ours (``None``: the
same tensor). Every peer key must be used by a row or explicitly allowed to go unused (weight-tied duplicates,
checked equal first), every row's key must exist, and shapes are checked by the strict load: all problems are
listed in one :class:`~perceivers.core.errors.ConfigError`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from perceivers.core.errors import ConfigError, ConfigTypeError
from perceivers.core.validation import check_bool, check_int, fail
from perceivers.models.hub import load_state_dict_strict

Transform = Callable[[Tensor], Tensor]
Row = tuple[str, str, Transform | None]


def first_half(t: Tensor) -> Tensor:
    """Rows ``[:n/2]`` of a fused ``(2n, C)`` projection (keys of a fused ``to_kv``)."""
    return t.chunk(2, dim=0)[0]


def second_half(t: Tensor) -> Tensor:
    """Rows ``[n/2:]`` of a fused ``(2n, C)`` projection (values of a fused ``to_kv``)."""
    return t.chunk(2, dim=0)[1]


def read_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """A ``torch.save``-d state dict (or a Lightning checkpoint's ``state_dict``, ``model.`` prefix removed), read
    with ``weights_only=True`` (plain tensors and containers only; nothing from the file can run). ``ConfigError``
    for anything else."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"state dict file {str(path)!r} does not exist")
    try:
        obj = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as exc:  # any refusal is a file the user gave us that is not a plain tensor pickle
        reason = " ".join(ln.strip() for ln in str(exc).splitlines()[:1]) or type(exc).__name__
        raise ConfigError(f"{path}: torch.load(weights_only=True) refused the file ({reason}); save the peer "
                          f"model's weights with torch.save(model.state_dict(), PATH)") from exc
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # a Lightning checkpoint: its module's weights sit under "model."
        if obj and all(isinstance(k, str) and k.startswith("model.") for k in obj):
            obj = {k.removeprefix("model."): v for k, v in obj.items()}
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ConfigError(f"{path}: expected a state dict (a dict of tensors), got {type(obj).__name__}")
    return dict(obj)


def read_settings(text: str | None) -> dict[str, Any]:
    """``--config``: a JSON object, given inline or as the path of a ``.json`` file (``None``: ``{}``)."""
    if text is None:
        return {}
    source = text
    if not text.lstrip().startswith("{"):
        file = Path(text)
        if not file.is_file():
            fail("--config", text, "a JSON object or the path of a JSON file")
        source = file.read_text(encoding="utf-8")
    try:
        value = json.loads(source)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--config: not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        fail("--config", value, "a JSON object of the peer's constructor arguments")
    return value


class Settings:
    """The peer's constructor arguments (``name -> value``), read with defaults and type checks; names the
    peer does not have are refused, naming the known ones. ``peer`` prefixes every message."""

    def __init__(self, peer: str, values: Mapping[str, Any] | None, known: Iterable[str]) -> None:
        self.peer = peer
        self.values = dict(values or {})
        unknown = sorted(set(self.values) - set(known))
        if unknown:
            raise ConfigError(f"{peer}: unknown setting(s) {unknown}; known: {sorted(known)}")

    def get(self, name: str, default: Any = None) -> Any:
        return self.values.get(name, default)

    def int(self, name: str, default: int | None = None, *, minimum: int = 1) -> int | None:
        value = self.values.get(name, default)
        if value is not None:
            check_int(f"{self.peer} {name}", value, minimum=minimum)
        return value

    def bool(self, name: str, default: bool | None = None) -> bool | None:
        value = self.values.get(name, default)
        if value is not None:
            check_bool(f"{self.peer} {name}", value)
        return value

    def number(self, name: str) -> float | None:
        value = self.values.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigTypeError(f"{self.peer} {name} must be a number, got {type(value).__name__} ({value!r})")
        return value

    def refuse(self, name: str, value: Any, why: str) -> None:
        """``ConfigError``: the peer setting ``name=value`` cannot be expressed here, and why."""
        raise ConfigError(f"{self.peer} setting {name}={value!r} cannot be converted: {why}")


def shape(state: Mapping[str, Tensor], key: str, peer: str) -> tuple[int, ...]:
    """The shape of ``state[key]``; ``ConfigError`` naming the key when the file lacks it."""
    if key not in state:
        raise ConfigError(f"{peer}: the state dict has no {key!r}; is it a {peer} model's state_dict()?")
    return tuple(state[key].shape)


def heads_split(inner: int, heads: int, dim_head: int | None, names: tuple[str, str], peer: str) -> None:
    """Check ``heads * dim_head == inner`` (the projection width in the file); ``dim_head`` may be ``None``."""
    if inner % heads or (dim_head is not None and heads * dim_head != inner):
        raise ConfigError(f"{peer}: {names[0]}={heads}" + (f" x {names[1]}={dim_head}" if dim_head else "")
                          + f" does not match the file's attention width {inner}")


def apply_table(state: Mapping[str, Tensor], rows: Iterable[Row], *, source: str,
                unused_ok: Iterable[str] = ()) -> dict[str, Tensor]:
    """Our state dict from the peer's ``state`` by ``rows``; ``ConfigError`` listing every peer key no row uses
    (unless in ``unused_ok``) and every row key the file lacks, at once."""
    rows = list(rows)
    used = {src for src, _, _ in rows}
    missing = sorted(src for src in used if src not in state)
    unexpected = sorted(set(state) - used - set(unused_ok))
    if missing or unexpected:
        parts = [f"missing {', '.join(missing)}"] if missing else []
        parts += [f"unexpected {', '.join(unexpected)}"] if unexpected else []
        raise ConfigError(f"{source} keys do not match the configuration: " + "; ".join(parts))
    out: dict[str, Tensor] = {}
    for src, dst, transform in rows:
        tensor = state[src].detach()
        out[dst] = (transform(tensor) if transform is not None else tensor).clone().float()
    return out


def check_tied(state: Mapping[str, Tensor], pairs: Iterable[tuple[str, str]], *, source: str, setting: str) -> None:
    """Each ``(copy, original)`` key pair of a weight-tied peer model must hold equal tensors."""
    differ = [copy for copy, original in pairs if not torch.equal(state[copy], state[original])]
    if differ:
        raise ConfigError(f"{source}: {setting} says these tensors are tied but they differ from the first "
                          f"shared layer: {', '.join(differ[:4])}{' ...' if len(differ) > 4 else ''}")


def build_loaded(model_cls: type[nn.Module], config: Any, state: dict[str, Tensor], *, source: str) -> nn.Module:
    """``model_cls(config)`` loaded strictly with ``state`` (persistent buffers the peer lacks, such as BatchNorm
    counters, keep the model's values); eval mode."""
    model = model_cls(config)
    buffers = {k: v for k, v in model.state_dict().items() if k not in state and k.endswith("num_batches_tracked")}
    try:
        load_state_dict_strict(model, {**state, **buffers}, source=source)
    except ValueError as exc:
        raise ConfigError("; ".join(line.strip() for line in str(exc).splitlines())) from exc
    return model.eval()
