"""A small ONNX-to-TensorFlow translator: the TFLite path for PyTorch and ONNX networks.

It rebuilds a feed-forward ONNX graph (MLPs and 1-D CNNs, as ``torch.onnx.export`` writes them) op
by op as a ``tf.function`` whose weights are constants, saves it as a SavedModel and lets the
TFLite converter take it from there. It runs offline with TensorFlow alone. Graphs with an op
outside :data:`SUPPORTED_OPS` are refused with the ops named and ``--target onnx`` suggested.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from converters.errors import ConversionError
from converters.targets.tflite import INPUT_NAME, SIGNATURE, import_tensorflow

__all__ = ["SUPPORTED_OPS", "onnx_to_saved_model"]

Op = Callable[[Any, list[Any], dict[str, Any], "_Graph"], Any]
_OPS: dict[str, Op] = {}


def _op(*names: str) -> Callable[[Op], Op]:
    def register(function: Op) -> Op:
        for name in names:
            _OPS[name] = function
        return function

    return register


class _Graph:
    """Translation state: TensorFlow tensors by ONNX name, and the constants known as NumPy."""

    def __init__(self, tf: Any) -> None:
        self.tf = tf
        self.tensors: dict[str, Any] = {}
        self.constants: dict[str, np.ndarray[Any, Any]] = {}

    def constant(self, name: str) -> np.ndarray[Any, Any]:
        if name not in self.constants:
            raise ConversionError(
                f"the ONNX graph computes {name} at run time where a constant is needed "
                "(a shape or axes); export with a fixed feature count, or use --target onnx"
            )
        return self.constants[name]


def _rank(x: Any) -> int:
    return int(x.shape.rank)


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


@_op("Identity", "Dropout")
def _identity(tf: Any, x: list[Any], a: dict[str, Any], g: _Graph) -> Any:
    return x[0]


@_op("Add", "Sub", "Mul", "Div", "Pow")
def _binary(tf: Any, x: list[Any], a: dict[str, Any], g: _Graph) -> Any:
    function = {"Add": tf.add, "Sub": tf.subtract, "Mul": tf.multiply, "Div": tf.divide}
    return function.get(a["_op"], tf.pow)(x[0], x[1])


@_op("Relu", "Sigmoid", "Tanh", "Erf", "Sqrt", "Exp", "Abs", "Neg")
def _unary(tf: Any, x: list[Any], a: dict[str, Any], g: _Graph) -> Any:
    function = {
        "Relu": tf.nn.relu,
        "Sigmoid": tf.math.sigmoid,
        "Tanh": tf.math.tanh,
        "Erf": tf.math.erf,
        "Sqrt": tf.math.sqrt,
        "Exp": tf.math.exp,
        "Abs": tf.math.abs,
        "Neg": tf.math.negative,
    }
    return function[a["_op"]](x[0])


@_op("LeakyRelu")
def _leaky_relu(tf: Any, x: list[Any], a: dict[str, Any], g: _Graph) -> Any:
    return tf.nn.leaky_relu(x[0], alpha=a.get("alpha", 0.01))


@_op("Clip")
def _clip(tf: Any, x: list[Any], a: dict[str, Any], g: _Graph) -> Any:
    low = x[1] if len(x) > 1 and x[1] is not None else a.get("min", -np.inf)
    high = x[2] if len(x) > 2 and x[2] is not None else a.get("max", np.inf)
    return tf.clip_by_value(x[0], low, high)


@_op("Softmax", "LogSoftmax")
def _softmax(tf: Any, x: list[Any], a: dict[str, Any], g: _Graph) -> Any:
    function = tf.nn.softmax if a["_op"] == "Softmax" else tf.nn.log_softmax
    return function(x[0], axis=a.get("axis", -1))


@_op("Gemm")
def _gemm(tf: Any, x: list[Any], a: dict[str, Any], g: _Graph) -> Any:
    product = tf.linalg.matmul(
        x[0], x[1], transpose_a=bool(a.get("transA", 0)), transpose_b=bool(a.get("transB", 0))
    )
    result = a.get("alpha", 1.0) * product if a.get("alpha", 1.0) != 1.0 else product
    if len(x) > 2 and x[2] is not None:
        result = result + a.get("beta", 1.0) * x[2]
    return result


@_op("MatMul")
def _matmul(tf: Any, x: list[Any], a: dict[str, Any], g: _Graph) -> Any:
    return tf.linalg.matmul(x[0], x[1])


@_op("Flatten")
def _flatten(tf: Any, x: list[Any], a: dict[str, Any], g: _Graph) -> Any:
    axis = _axis(a.get("axis", 1), _rank(x[0]))
    if axis != 1:
        raise ConversionError(f"Flatten with axis {axis} is not supported; use --target onnx")
    return tf.reshape(x[0], [tf.shape(x[0])[0], -1])


@_op("Reshape")
def _reshape(tf: Any, x: list[Any], a: dict[str, Any], g: _Graph) -> Any:
    shape = g.constant(a["_inputs"][1]).astype(np.int64).tolist()
    dims = [tf.shape(x[0])[i] if size == 0 else size for i, size in enumerate(shape)]
    return tf.reshape(x[0], tf.stack([tf.cast(d, tf.int32) for d in dims]))


def _axes(a: dict[str, Any], g: _Graph) -> list[int]:
    if "axes" in a:
        return [int(v) for v in a["axes"]]
    if len(a["_inputs"]) > 1:
        return [int(v) for v in g.constant(a["_inputs"][1]).ravel()]
    return []


@_op("Unsqueeze")
def _unsqueeze(tf: Any, x: list[Any], a: dict[str, Any], g: _Graph) -> Any:
    result = x[0]
    rank = _rank(x[0]) + len(_axes(a, g))
    for axis in sorted(_axis(v, rank) for v in _axes(a, g)):
        result = tf.expand_dims(result, axis)
    return result


@_op("Squeeze")
def _squeeze(tf: Any, x: list[Any], a: dict[str, Any], g: _Graph) -> Any:
    axes = _axes(a, g)
    return tf.squeeze(x[0], axis=axes or None)


@_op("Transpose")
def _transpose(tf: Any, x: list[Any], a: dict[str, Any], g: _Graph) -> Any:
    return tf.transpose(x[0], perm=a.get("perm"))


@_op("Concat")
def _concat(tf: Any, x: list[Any], a: dict[str, Any], g: _Graph) -> Any:
    return tf.concat(x, axis=a["axis"])


@_op("ArgMax")
def _argmax(tf: Any, x: list[Any], a: dict[str, Any], g: _Graph) -> Any:
    result = tf.math.argmax(x[0], axis=a.get("axis", 0), output_type=tf.int64)
    return tf.expand_dims(result, a.get("axis", 0)) if a.get("keepdims", 1) else result


@_op("ReduceMean")
def _reduce_mean(tf: Any, x: list[Any], a: dict[str, Any], g: _Graph) -> Any:
    return tf.reduce_mean(x[0], axis=_axes(a, g) or None, keepdims=bool(a.get("keepdims", 1)))


@_op("GlobalAveragePool")
def _global_average_pool(tf: Any, x: list[Any], a: dict[str, Any], g: _Graph) -> Any:
    return tf.reduce_mean(x[0], axis=list(range(2, _rank(x[0]))), keepdims=True)


@_op("BatchNormalization")
def _batch_norm(tf: Any, x: list[Any], a: dict[str, Any], g: _Graph) -> Any:
    scale, bias, mean, var = x[1:5]
    shape = [-1] + [1] * (_rank(x[0]) - 2)  # parameters run along the channel axis 1
    inverse = tf.reshape(scale / tf.sqrt(var + a.get("epsilon", 1e-5)), shape)
    return (x[0] - tf.reshape(mean, shape)) * inverse + tf.reshape(bias, shape)


def _one_d(a: dict[str, Any], what: str) -> tuple[int, int, list[int], int]:
    kernel = a.get("kernel_shape", [1])
    if len(kernel) != 1:
        raise ConversionError(f"{what} over {len(kernel)} dimensions is not supported (1-D only)")
    pads = a.get("pads", [0, 0])
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise ConversionError(f"{what} with auto_pad is not supported; export explicit padding")
    return (
        int(kernel[0]),
        int(a.get("strides", [1])[0]),
        [int(pads[0]), int(pads[1])],
        int(a.get("dilations", [1])[0]),
    )


@_op("Conv")
def _conv(tf: Any, x: list[Any], a: dict[str, Any], g: _Graph) -> Any:
    if _rank(x[0]) != 3 or a.get("group", 1) != 1:
        raise ConversionError("only 1-D convolutions without groups are supported")
    a.setdefault("kernel_shape", [int(x[1].shape[2])])
    _, stride, pads, dilation = _one_d(a, "Conv")
    nwc = tf.pad(tf.transpose(x[0], [0, 2, 1]), [[0, 0], pads, [0, 0]])
    filters = tf.transpose(x[1], [2, 1, 0])  # ONNX (out, in, k) -> TF (k, in, out)
    result = tf.nn.conv1d(nwc, filters, stride=stride, padding="VALID", dilations=dilation)
    if len(x) > 2 and x[2] is not None:
        result = result + x[2]
    return tf.transpose(result, [0, 2, 1])


@_op("MaxPool", "AveragePool")
def _pool(tf: Any, x: list[Any], a: dict[str, Any], g: _Graph) -> Any:
    kernel, stride, pads, _ = _one_d(a, a["_op"])
    nwc = tf.transpose(x[0], [0, 2, 1])
    if a["_op"] == "MaxPool":
        nwc = tf.pad(nwc, [[0, 0], pads, [0, 0]], constant_values=-np.inf)
        result = tf.nn.max_pool1d(nwc, kernel, stride, "VALID")
    else:
        if pads != [0, 0]:
            raise ConversionError("AveragePool with padding is not supported; use --target onnx")
        result = tf.nn.avg_pool1d(nwc, kernel, stride, "VALID")
    return tf.transpose(result, [0, 2, 1])


SUPPORTED_OPS = frozenset(_OPS) | {"Constant"}


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    values = {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}
    return values | {"_op": node.op_type, "_inputs": list(node.input)}


def _translate(tf: Any, proto: Any, inputs: Any) -> dict[str, Any]:
    from onnx import numpy_helper

    graph = _Graph(tf)
    for init in proto.graph.initializer:
        array = numpy_helper.to_array(init)
        graph.constants[init.name] = array
        graph.tensors[init.name] = tf.constant(array)
    initializers = set(graph.constants)
    feed = [value.name for value in proto.graph.input if value.name not in initializers]
    graph.tensors[feed[0]] = inputs
    for node in proto.graph.node:
        if node.op_type == "Constant":
            array = numpy_helper.to_array(node.attribute[0].t)
            graph.constants[node.output[0]] = array
            graph.tensors[node.output[0]] = tf.constant(array)
            continue
        args = [graph.tensors.get(name) if name else None for name in node.input]
        result = _OPS[node.op_type](tf, args, _attributes(node), graph)
        graph.tensors[node.output[0]] = result
    return {
        f"output_{index}": graph.tensors[value.name]
        for index, value in enumerate(proto.graph.output)
    }


def onnx_to_saved_model(model: bytes, directory: Path) -> None:
    """Rebuild the ONNX network ``model`` in TensorFlow and save it to ``directory``."""
    import onnx

    proto = onnx.load_from_string(model)
    unsupported = sorted({node.op_type for node in proto.graph.node} - SUPPORTED_OPS)
    if unsupported:
        raise ConversionError(
            f"the network uses ONNX ops the TFLite path does not translate: "
            f"{', '.join(unsupported)}; use --target onnx"
        )
    initializers = {init.name for init in proto.graph.initializer}
    (feed,) = [value for value in proto.graph.input if value.name not in initializers]
    width = feed.type.tensor_type.shape.dim[1].dim_value
    tf = import_tensorflow()
    module = tf.Module()
    spec = tf.TensorSpec([None, width], tf.float32, name=INPUT_NAME)
    module.serve = tf.function(lambda rows: _translate(tf, proto, rows), input_signature=[spec])
    try:
        tf.saved_model.save(module, str(directory), signatures={SIGNATURE: module.serve})
    except ConversionError:
        raise
    except Exception as err:  # tracing raises whatever TensorFlow raises
        raise ConversionError(f"the network could not be rebuilt in TensorFlow: {err}") from err
