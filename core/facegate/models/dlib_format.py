"""dlib's ``.dat`` network files read with numpy alone, and a literal numpy forward pass.

dlib serialises a network by recursion: each wrapper writes its version header, then its
whole sub-network, then its own layer. Read flat, a file is therefore the loss layer, the
version headers outermost-first, the input layer, and then every layer's parameters
input-side first. Scalars use dlib's portable encodings (see :func:`decode_int` and
:func:`decode_float`); tensors are raw little-endian float32 after their dimensions.

Two things the file does not say, recovered from dlib's residual idioms (``residual`` and
``residual_down`` in dlib's ResNet examples, which the face model uses):

- tag and skip wrappers are written identically (version 1 and the sub-network), so a
  wrapper directly above another one is taken for a skip (``skip1<tag2<...>>``), all others
  for tags;
- tag ids are compile-time template arguments, not data. Each residual unit opens with
  ``tag1``; a down-sampling unit tags its main branch ``tag2``, skips back to ``tag1`` and
  its ``add_prev2`` adds ``tag2``; a plain unit's ``add_prev1`` adds ``tag1``.

Every reference is resolved to the index of the layer it names, and a file whose wiring does
not fit is refused with a ``ValueError`` rather than guessed at.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

#: ``float_details`` exponents that stand for infinities and NaN.
_SPECIAL_EXPONENTS = {32000: math.inf, 32001: -math.inf, 32002: math.nan}
#: dlib's RGB input layers divide by this after subtracting the channel means (not stored).
INPUT_SCALE = 256.0
#: Layers that hold no parameters or hyper-parameters in the file.
_EMPTY_LAYERS = {"relu_": "relu", "add_prev_": "add_prev"}


@dataclass
class DlibLayer:
    """One layer of a dlib network, in input -> output order.

    ``params`` holds numpy arrays (``filters``, ``biases``, ``gamma``, ``beta``, ``weights``)
    and hyper-parameters (``num_filters``, ``nr``, ``nc``, ``stride_y`` ...). ``tag`` is a
    tag layer's id, or for ``add_prev`` and ``skip`` the id they refer to; ``source`` is
    then the index, in the same list, of the tag layer referred to.
    """

    kind: str
    version: str
    params: dict[str, Any] = field(default_factory=dict)
    tag: int | None = None
    source: int | None = None


# ----------------------------------------------------------------------------- primitives


def decode_int(data: bytes | memoryview, pos: int, max_bytes: int = 8) -> tuple[int, int]:
    """dlib's variable-length integer at ``pos``: ``(value, next_pos)``.

    A control byte (bit 7: negative, low nibble: byte count) then that many little-endian
    magnitude bytes.
    """
    if pos >= len(data):
        raise ValueError(f"truncated dlib file: integer expected at byte {pos}")
    control = data[pos]
    size = control & 0x0F
    if size > max_bytes or control & 0x70:
        raise ValueError(f"not a dlib integer at byte {pos} (control byte {control:#04x})")
    end = pos + 1 + size
    if end > len(data):
        raise ValueError(f"truncated dlib file: integer at byte {pos} runs past the end")
    value = int.from_bytes(bytes(data[pos + 1 : end]), "little")
    return (-value if control & 0x80 else value), end


def decode_float(data: bytes | memoryview, pos: int) -> tuple[float, int]:
    """dlib's portable float (``float_details``): int64 mantissa, int16 exponent."""
    mantissa, pos = decode_int(data, pos, 8)
    exponent, pos = decode_int(data, pos, 2)
    if exponent in _SPECIAL_EXPONENTS:
        return _SPECIAL_EXPONENTS[exponent], pos
    return math.ldexp(float(mantissa), exponent), pos


class _Reader:
    """A cursor over the file's bytes; every read fails with a ``ValueError`` past the end."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def read_int(self, max_bytes: int = 8) -> int:
        value, self.pos = decode_int(self.data, self.pos, max_bytes)
        return value

    def count(self) -> int:
        value = self.read_int()
        if value < 0:
            raise ValueError(f"negative size {value} before byte {self.pos}")
        return value

    def read_float(self) -> float:
        value, self.pos = decode_float(self.data, self.pos)
        return value

    def raw(self, size: int) -> memoryview:
        if self.pos + size > len(self.data):
            raise ValueError(f"truncated dlib file: {size} bytes expected at byte {self.pos}")
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def string(self) -> str:
        return bytes(self.raw(self.count())).decode("latin-1")

    def read_bool(self) -> bool:
        byte = bytes(self.raw(1))
        if byte not in (b"0", b"1"):
            raise ValueError(f"not a dlib bool at byte {self.pos - 1}: {byte!r}")
        return byte == b"1"

    def tensor(self) -> np.ndarray:
        version = self.read_int()
        if version != 2:
            raise ValueError(f"unknown dlib tensor version {version} before byte {self.pos}")
        shape = tuple(self.count() for _ in range(4))
        size = math.prod(shape)
        return np.frombuffer(self.raw(4 * size), dtype="<f4").reshape(shape).astype(np.float32)

    def alias_shape(self) -> tuple[int, int, int, int]:
        version = self.read_int()
        if version != 1:
            raise ValueError(f"unknown dlib alias_tensor version {version} before byte {self.pos}")
        n, k, nr, nc = (self.count() for _ in range(4))
        return n, k, nr, nc


def _split(params: np.ndarray, *shapes: tuple[int, ...]) -> list[np.ndarray]:
    """Views of a layer's flat parameter tensor in the order of its aliases."""
    flat = params.reshape(-1)
    need = sum(math.prod(s) for s in shapes)
    if need != flat.size:
        raise ValueError(f"parameter tensor of {flat.size} values, aliases need {need}")
    out, offset = [], 0
    for shape in shapes:
        size = math.prod(shape)
        out.append(flat[offset : offset + size].reshape(shape))
        offset += size
    return out


# ----------------------------------------------------------------------------- layers


def _con(r: _Reader) -> dict[str, Any]:
    params = r.tensor()
    hyper = {"num_filters": r.read_int()}
    for name in ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x"):
        hyper[name] = r.read_int()
    filters_shape, biases_shape = r.alias_shape(), r.alias_shape()
    filters, biases = _split(params, filters_shape, biases_shape)
    for _ in range(4):  # learning-rate and weight-decay multipliers: training only
        r.read_float()
    return {**hyper, "filters": filters, "biases": biases.reshape(-1)}


def _affine(r: _Reader) -> dict[str, Any]:
    params = r.tensor()
    gamma, beta = _split(params, r.alias_shape(), r.alias_shape())
    return {"gamma": gamma, "beta": beta, "mode": r.read_int()}


def _fc(r: _Reader) -> dict[str, Any]:
    num_outputs, num_inputs = r.count(), r.count()
    params = r.tensor()
    weights_shape, _ = r.alias_shape(), r.alias_shape()
    bias_mode = r.read_int()
    for _ in range(4):
        r.read_float()
    has_bias = params.size == num_inputs * num_outputs + num_outputs
    shapes = [(num_inputs, num_outputs)] + ([(num_outputs,)] if has_bias else [])
    if math.prod(weights_shape) != num_inputs * num_outputs:
        raise ValueError(f"fc weights alias {weights_shape} for {num_inputs}x{num_outputs}")
    parts = _split(params, *shapes)
    out: dict[str, Any] = {
        "num_outputs": num_outputs,
        "num_inputs": num_inputs,
        "bias_mode": bias_mode,
        "weights": parts[0],
    }
    if has_bias:
        out["biases"] = parts[1]
    return out


def _pool(r: _Reader) -> dict[str, Any]:
    names = ("nr", "nc", "stride_y", "stride_x", "padding_y", "padding_x")
    return {name: r.read_int() for name in names}


#: version string -> (kind, reader of what follows the string).
_DETAILS: dict[str, tuple[str, Callable[[_Reader], dict[str, Any]]]] = {
    "con_4": ("con", _con),
    "affine_": ("affine", _affine),
    "fc_2": ("fc", _fc),
    "max_pool_2": ("max_pool", _pool),
    "avg_pool_2": ("avg_pool", _pool),
}


def _details(r: _Reader) -> DlibLayer:
    start = r.pos
    version = r.string()
    if version in _EMPTY_LAYERS:
        return DlibLayer(_EMPTY_LAYERS[version], version)
    if version not in _DETAILS:
        raise ValueError(f"unknown dlib layer {version!r} at byte {start}")
    kind, read = _DETAILS[version]
    return DlibLayer(kind, version, read(r))


def _input(r: _Reader) -> DlibLayer:
    start = r.pos
    version = r.string()
    if version not in ("input_rgb_image", "input_rgb_image_sized"):
        raise ValueError(f"unknown dlib input layer {version!r} at byte {start}")
    mean = np.array([r.read_float() for _ in range(3)], dtype=np.float64)
    params: dict[str, Any] = {"mean": mean, "scale": 1.0 / INPUT_SCALE}
    if version == "input_rgb_image_sized":
        params["nr"], params["nc"] = r.count(), r.count()
    return DlibLayer("input", version, params)


def _loss(r: _Reader) -> DlibLayer:
    start = r.pos
    version = r.string()
    if version != "loss_metric_2":
        raise ValueError(f"unknown dlib loss layer {version!r} at byte {start}")
    return DlibLayer(
        "loss_metric", version, {"margin": r.read_float(), "distance_threshold": r.read_float()}
    )


def _trailer(r: _Reader, version: int) -> None:
    """What ``add_layer`` writes after its layer: training state, read and dropped."""
    for _ in range(3):  # setup called, gradient stale, output disabled
        r.read_bool()
    for _ in range(3):  # x_grad, cached_output, params_grad (or grad_final)
        r.tensor()
    if version == 3:
        r.read_int()  # sample expansion factor


# ----------------------------------------------------------------------------- the network


def parse_dlib_net(data: bytes) -> list[DlibLayer]:
    """A dlib ``loss_metric`` network from its serialised bytes, input -> output.

    The list starts with the input layer and ends with the loss layer, as dlib's own
    ``num_layers`` counts them. The whole buffer must be consumed.
    """
    r = _Reader(data)
    if r.read_int() != 1:
        raise ValueError("not a dlib add_loss_layer (version 1 expected at byte 0)")
    loss = _loss(r)
    headers: list[int] = []
    while True:
        version = r.read_int()
        if version == 3:  # add_layer directly over the input layer
            break
        if version not in (1, 2):
            raise ValueError(f"unknown dlib layer wrapper version {version} near byte {r.pos}")
        headers.append(version)
    layers = [_input(r)]
    for version in [3, *reversed(headers)]:
        if version == 1:
            layers.append(DlibLayer("tag_or_skip", "add_tag_layer/add_skip_layer"))
            continue
        layers.append(_details(r))
        _trailer(r, version)
    if r.pos != len(data):
        raise ValueError(f"{len(data) - r.pos} unread bytes after the network at byte {r.pos}")
    layers.append(loss)
    _wire(layers)
    return layers


def read_dlib_net(path: str | Path) -> list[DlibLayer]:
    """:func:`parse_dlib_net` of a ``.dat`` file."""
    return parse_dlib_net(Path(path).read_bytes())


def _wire(layers: list[DlibLayer]) -> None:
    """Tell tags from skips and resolve every reference (module docstring), in place."""
    for i, layer in enumerate(layers):
        if layer.kind == "tag_or_skip":
            above_a_tag = layers[i - 1].kind == "tag"
            layer.kind, layer.version = ("skip", "skip") if above_a_tag else ("tag", "tag")
    for i, layer in enumerate(layers):
        if layer.kind == "tag":
            above_is_skip = i + 1 < len(layers) and layers[i + 1].kind == "skip"
            layer.tag = 2 if above_is_skip else 1
    for i, layer in enumerate(layers):
        if layer.kind == "skip":
            layer.tag = 1
        elif layer.kind == "add_prev":
            opened = _nearest_tag(layers, i, 1)
            layer.tag = 2 if any(lay.kind == "skip" for lay in layers[opened:i]) else 1
        else:
            continue
        layer.source = _nearest_tag(layers, i, layer.tag)


def _nearest_tag(layers: list[DlibLayer], below: int, tag: int) -> int:
    """Index of the nearest ``tag`` layer strictly input-side of ``below``, like dlib's
    ``layer<tagN>(sub)``."""
    for j in range(below - 1, -1, -1):
        if layers[j].kind == "tag" and layers[j].tag == tag:
            return j
    raise ValueError(f"layer {below} ({layers[below].kind}) refers to tag{tag}, which is absent")


def count_parameters(layers: list[DlibLayer]) -> int:
    """Learned values in the network (filters, biases, affine scale and shift, fc)."""
    names = ("filters", "biases", "gamma", "beta", "weights")
    return sum(
        int(np.asarray(layer.params[n]).size)
        for layer in layers
        for n in names
        if isinstance(layer.params.get(n), np.ndarray)
    )


# ----------------------------------------------------------------------------- reference


def forward_reference(layers: list[DlibLayer], x: np.ndarray) -> np.ndarray:
    """The network's output for ``(N, 3, H, W)`` RGB 0..255, one dlib layer at a time.

    Float64 numpy straight from the parsed description, sharing nothing with the torch port:
    the independent check that the port (and its affine folding) computes what dlib does.
    """
    out = np.asarray(x, dtype=np.float64)
    tagged: dict[int, np.ndarray] = {}
    for i, layer in enumerate(layers):
        if layer.kind == "loss_metric":
            break
        if layer.kind == "skip":
            assert layer.source is not None
            out = tagged[layer.source]
        elif layer.kind == "add_prev":
            assert layer.source is not None
            out = add_zero_filled(out, tagged[layer.source])
        elif layer.kind == "tag":
            tagged[i] = out
        else:
            out = _APPLY[layer.kind](layer.params, out)
    return out


def add_zero_filled(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """dlib's ``add_prev``: the sum at the larger size, missing values taken as zero (the
    smaller tensor sits at the top-left, in the first channels)."""
    shape = tuple(max(p, q) for p, q in zip(a.shape, b.shape, strict=True))
    total = np.zeros(shape, dtype=np.result_type(a, b))
    total[tuple(slice(0, s) for s in a.shape)] += a
    total[tuple(slice(0, s) for s in b.shape)] += b
    return total


def _windows(x: np.ndarray, p: dict[str, Any], fill: float) -> np.ndarray:
    """``(N, C, Ho, Wo, kh, kw)`` windows; a size of 0 means the whole input (dlib's
    ``avg_pool_everything``)."""
    py, px = p["padding_y"], p["padding_x"]
    if py or px:
        x = np.pad(x, ((0, 0), (0, 0), (py, py), (px, px)), constant_values=fill)
    kh = p["nr"] or x.shape[2]
    kw = p["nc"] or x.shape[3]
    view = sliding_window_view(x, (kh, kw), axis=(2, 3))
    return view[:, :, :: p["stride_y"], :: p["stride_x"]]


def _input_layer(p: dict[str, Any], x: np.ndarray) -> np.ndarray:
    if "nr" in p and x.shape[2:] != (p["nr"], p["nc"]):
        raise ValueError(f"the network takes {p['nr']}x{p['nc']} images, got {x.shape[2:]}")
    return (x - p["mean"][None, :, None, None]) * p["scale"]


def _conv(p: dict[str, Any], x: np.ndarray) -> np.ndarray:
    windows = _windows(x, p, 0.0)
    filters = p["filters"].astype(np.float64)
    out = np.einsum("nchwij,fcij->nfhw", windows, filters, optimize=True)
    return out + p["biases"].astype(np.float64)[None, :, None, None]


def _avg_pool(p: dict[str, Any], x: np.ndarray) -> np.ndarray:
    if p["padding_y"] or p["padding_x"]:
        raise ValueError("padded average pooling is not supported")
    return _windows(x, p, 0.0).mean(axis=(4, 5))


def _fc_layer(p: dict[str, Any], x: np.ndarray) -> np.ndarray:
    out = x.reshape(len(x), -1) @ p["weights"].astype(np.float64)
    return out + p["biases"] if "biases" in p else out


_APPLY: dict[str, Callable[[dict[str, Any], np.ndarray], np.ndarray]] = {
    "input": _input_layer,
    "con": _conv,
    "affine": lambda p, x: x * p["gamma"] + p["beta"],
    "relu": lambda p, x: np.maximum(x, 0.0),
    "max_pool": lambda p, x: _windows(x, p, -np.inf).max(axis=(4, 5)),
    "avg_pool": _avg_pool,
    "fc": _fc_layer,
}
