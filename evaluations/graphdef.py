"""TensorFlow GraphDef files without TensorFlow: the protobuf wire format, read and written by hand.

Only the messages a frozen inference graph uses are decoded (tensorflow/core/framework/*.proto field numbers):
GraphDef {node 1, versions 4}, NodeDef {name 1, op 2, input 3, attr 5}, AttrValue {list 1, s 2, i 3, f 4, b 5,
type 6, shape 7, tensor 8}, TensorProto {dtype 1, tensor_shape 2, tensor_content 4, float_val 5, double_val 6,
int_val 7, string_val 8, int64_val 10, bool_val 11, half_val 13}, TensorShapeProto {dim 2 {size 1},
unknown_rank 3}, VersionDef {producer 1}. Other fields are skipped, as protobuf readers do.

    read_graph_def(path) -> GraphDef(nodes=[Node(name, op, inputs, attrs)], producer)
    encode_graph_def(nodes, producer) -> bytes      # for stand-in graphs; TensorFlow parses the result

Attribute values come back as Python values: bytes (s), int (i, type), float (f), bool (b), a shape tuple
(None for an unknown rank, -1 for an unknown dimension), a numpy array (tensor; None for string tensors, which
no op here reads; a read-only broadcast view for a tensor stored as one value), or a list of those (list).
Nothing here executes anything.

    fetch_path(graph, feed, fetches) -> the nodes that computing `fetches` runs (data and control inputs)
    check_allowed_ops(graph, path, feed, fetches) -> ValueError for an op outside ALLOWED_OPS on that path
"""
import builtins
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

# tensorflow/core/framework/types.proto
DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8, 9: np.int64,
          10: np.bool_, 17: np.uint16, 19: np.float16, 22: np.uint32, 23: np.uint64}
DT_STRING = 7
DTYPE_NAMES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string",
               9: "int64", 10: "bool", 14: "bfloat16", 17: "uint16", 19: "float16", 22: "uint32",
               23: "uint64"}
DT_OF_NUMPY = {np.dtype(v): k for k, v in DTYPES.items()}
# a tensor stored as a few values whose last one repeats is expanded when read; above this many elements
# (the Inception graph's largest constant has 2.1M) the file is refused instead
MAX_EXPANDED_ELEMENTS = 1 << 24


class GraphDefError(ValueError):
    """The bytes are not a GraphDef this reader understands."""


@dataclass
class Node:
    name: str
    op: str
    # "node", "node:1", "^node" (control input)
    inputs: list = field(default_factory=list)
    attrs: dict = field(default_factory=dict)


@dataclass
class GraphDef:
    nodes: list
    producer: int = 0


# ------------------------------------------------------------------------------------------------------------
# Wire format: (field number, wire type, value) triples
# ------------------------------------------------------------------------------------------------------------

def _varint(buf: bytes, pos: int):
    result, shift = 0, 0
    while True:
        if pos >= len(buf):
            raise GraphDefError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise GraphDefError("varint longer than 10 bytes")


def _fields(buf: bytes):
    """Yields (field number, wire type, value): int for varint / fixed, bytes for length-delimited."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise GraphDefError("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            if pos + 8 > end:
                raise GraphDefError("truncated 64-bit field")
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > end:
                raise GraphDefError(f"length-delimited field {number} runs past the end ({size} bytes)")
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            if pos + 4 > end:
                raise GraphDefError("truncated 32-bit field")
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise GraphDefError(f"wire type {wire} (field {number}) is not used by GraphDef")
        yield number, wire, value


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _packed_varints(wire, value):
    if wire == 0:
        return [value]
    out, pos = [], 0
    while pos < len(value):
        v, pos = _varint(value, pos)
        out.append(v)
    return out


def _packed_fixed(wire, value, fmt: str, size: int):
    if wire == 2:
        if len(value) % size:
            raise GraphDefError("packed fixed-width field of a wrong length")
        return list(struct.unpack(f"<{len(value) // size}{fmt}", value))
    return [struct.unpack(f"<{fmt}", value)[0]]


def _text(value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise GraphDefError("a name is not UTF-8 text") from None


# ------------------------------------------------------------------------------------------------------------
# Messages
# ------------------------------------------------------------------------------------------------------------

def _shape(buf: bytes):
    dims, unknown = [], False
    for number, wire, value in _fields(buf):
        if number == 2 and wire == 2:
            size = 0
            for n, w, v in _fields(value):
                if n == 1 and w == 0:
                    size = _signed64(v)
            dims.append(size)
        elif number == 3 and wire == 0:
            unknown = bool(value)
    return None if unknown else tuple(dims)


def _tensor(buf: bytes):
    dtype = 1
    shape = ()
    content = None
    values = {"f": [], "d": [], "i": [], "i64": [], "b": [], "h": []}
    for number, wire, value in _fields(buf):
        if number == 1:
            dtype = value
        elif number == 2:
            shape = _shape(value) or ()
        elif number == 4:
            content = value
        elif number == 5:
            values["f"] += _packed_fixed(wire, value, "f", 4)
        elif number == 6:
            values["d"] += _packed_fixed(wire, value, "d", 8)
        elif number == 7:
            values["i"] += [_signed64(v) for v in _packed_varints(wire, value)]
        elif number == 10:
            values["i64"] += [_signed64(v) for v in _packed_varints(wire, value)]
        elif number == 11:
            values["b"] += _packed_varints(wire, value)
        elif number == 13:
            values["h"] += _packed_varints(wire, value)
    if dtype == DT_STRING:
        return None
    if dtype not in DTYPES:
        raise GraphDefError(f"tensor of dtype {DTYPE_NAMES.get(dtype, dtype)} is not supported")
    np_dtype = np.dtype(DTYPES[dtype])
    if any(d < 0 for d in shape):
        raise GraphDefError(f"constant tensor with an unknown dimension {shape}")
    count = int(np.prod(shape, dtype=np.int64))
    if content is not None:
        if len(content) != count * np_dtype.itemsize:
            raise GraphDefError(f"tensor_content has {len(content)} bytes, shape {shape} of {np_dtype} needs "
                                f"{count * np_dtype.itemsize}")
        return np.frombuffer(content, dtype=np_dtype.newbyteorder("<")).astype(np_dtype).reshape(shape)
    if np_dtype == np.float16:
        flat = np.array(values["h"], dtype=np.uint16).view(np.float16)
    else:
        key = {np.dtype(np.float32): "f", np.dtype(np.float64): "d", np.dtype(np.int64): "i64",
               np.dtype(np.bool_): "b"}.get(np_dtype, "i")
        flat = np.array(values[key], dtype=np_dtype)
    if flat.size == count:
        return flat.reshape(shape)
    # one value (zeros: none) for the whole tensor: a read-only broadcast view, so that a few bytes that
    # declare 2^28 elements cost no memory unless an op on the fetch path reads them
    if flat.size <= 1:
        return np.broadcast_to(flat[0] if flat.size else np_dtype.type(0), shape)
    if flat.size > count:
        raise GraphDefError(f"tensor has {flat.size} values for shape {shape}")
    if count > MAX_EXPANDED_ELEMENTS:
        raise GraphDefError(f"tensor of shape {shape} declares {count} elements but stores {flat.size} "
                            f"values (at most {MAX_EXPANDED_ELEMENTS} are expanded)")
    # TF writes a repeated last value only once
    return np.concatenate([flat, np.full(count - flat.size, flat[-1], dtype=np_dtype)]).reshape(shape)


def _attr_list(buf: bytes):
    out = []
    for number, wire, value in _fields(buf):
        if number == 2:
            out.append(value)
        elif number in (3, 6):
            out += [_signed64(v) for v in _packed_varints(wire, value)]
        elif number == 4:
            out += _packed_fixed(wire, value, "f", 4)
        elif number == 5:
            out += [bool(v) for v in _packed_varints(wire, value)]
        elif number == 7:
            out.append(_shape(value))
        elif number == 8:
            out.append(_tensor(value))
    return out


def _attr_value(buf: bytes):
    value = None
    for number, wire, v in _fields(buf):
        if number == 1:
            value = _attr_list(v)
        elif number == 2:
            value = v
        elif number in (3, 6):
            value = _signed64(v)
        elif number == 4:
            value = struct.unpack("<f", v)[0]
        elif number == 5:
            value = bool(v)
        elif number == 7:
            value = _shape(v)
        elif number == 8:
            value = _tensor(v)
    return value


def _node(buf: bytes) -> Node:
    node = Node("", "")
    for number, wire, value in _fields(buf):
        if wire != 2:
            continue
        if number == 1:
            node.name = _text(value)
        elif number == 2:
            node.op = _text(value)
        elif number == 3:
            node.inputs.append(_text(value))
        elif number == 5:
            key, attr = "", None
            for n, w, v in _fields(value):
                if n == 1:
                    key = _text(v)
                elif n == 2:
                    attr = _attr_value(v)
            node.attrs[key] = attr
    if not node.name or not node.op:
        raise GraphDefError("a node without a name or an op")
    return node


def parse_graph_def(data: bytes) -> GraphDef:
    """GraphDef bytes -> GraphDef. Raises GraphDefError when the bytes are not a GraphDef."""
    nodes, producer = [], 0
    for number, wire, value in _fields(data):
        if number == 1 and wire == 2:
            nodes.append(_node(value))
        elif number == 4 and wire == 2:
            for n, w, v in _fields(value):
                if n == 1 and w == 0:
                    producer = v
    if not nodes:
        raise GraphDefError("no nodes")
    return GraphDef(nodes, producer)


def read_graph_def(path: str) -> GraphDef:
    """The GraphDef in `path`; ValueError "PATH: not a TensorFlow GraphDef (...)" for anything else."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return parse_graph_def(data)
    except GraphDefError as e:
        raise ValueError(f"{path}: not a TensorFlow GraphDef ({e})") from None


# ------------------------------------------------------------------------------------------------------------
# Writing (stand-in graphs)
# ------------------------------------------------------------------------------------------------------------

def _enc_varint(v: int) -> bytes:
    if v < 0:
        v += 1 << 64
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _enc(number: int, value) -> bytes:
    """One field: int -> varint, bytes -> length-delimited."""
    if isinstance(value, bytes):
        return _enc_varint(number << 3 | 2) + _enc_varint(len(value)) + value
    return _enc_varint(number << 3) + _enc_varint(int(value))


def _enc_shape(shape) -> bytes:
    if shape is None:
        return _enc(3, 1)
    return b"".join(_enc(2, _enc(1, d)) for d in shape)


def encode_tensor(array: np.ndarray) -> bytes:
    # (np.ascontiguousarray would turn a scalar into shape (1,))
    array = np.array(array, order="C")
    dtype = DT_OF_NUMPY[array.dtype]
    content = array.astype(array.dtype.newbyteorder("<")).tobytes()
    return _enc(1, dtype) + _enc(2, _enc_shape(array.shape)) + _enc(4, content)


class Attr:
    """Tagged attribute values for encode_graph_def (plain Python values are ambiguous: int vs type)."""

    # The methods below shadow int / float / bool / type inside this class: hints name the builtins.
    @staticmethod
    def type(dtype: builtins.type | np.dtype) -> bytes:
        return _enc(6, DT_OF_NUMPY[np.dtype(dtype)])

    @staticmethod
    def string_type() -> bytes:
        return _enc(6, DT_STRING)

    @staticmethod
    def ints(values: Iterable[builtins.int]) -> bytes:
        return _enc(1, _enc(3, b"".join(_enc_varint(v) for v in values)))

    @staticmethod
    def int(value: builtins.int) -> bytes:
        return _enc(3, value)

    @staticmethod
    def float(value: builtins.float) -> bytes:
        return _enc_varint(4 << 3 | 5) + struct.pack("<f", value)

    @staticmethod
    def bool(value: builtins.bool) -> bytes:
        return _enc(5, int(bool(value)))

    @staticmethod
    def str(value: str) -> bytes:
        return _enc(2, value.encode())

    @staticmethod
    def shape(shape: tuple | None) -> bytes:
        return _enc(7, _enc_shape(shape))

    @staticmethod
    def tensor(array: np.ndarray) -> bytes:
        return _enc(8, encode_tensor(np.asarray(array)))

    @staticmethod
    def string_tensor() -> bytes:
        """An empty scalar string tensor (the real graph's DecodeJpeg/contents)."""
        return _enc(8, _enc(1, DT_STRING) + _enc(2, b""))


def encode_node(name: str, op: str, inputs: Iterable[str] = (),
                attrs: dict[str, bytes] | None = None) -> bytes:
    """One NodeDef; attrs maps names to Attr.* encodings."""
    body = _enc(1, name.encode()) + _enc(2, op.encode()) + b"".join(_enc(3, i.encode()) for i in inputs)
    for key in sorted(attrs or {}):
        body += _enc(5, _enc(1, key.encode()) + _enc(2, attrs[key]))
    return body


def encode_graph_def(nodes: Iterable[bytes], producer: int) -> bytes:
    """GraphDef bytes from encode_node() results."""
    return b"".join(_enc(1, n) for n in nodes) + _enc(4, _enc(1, producer))


# ------------------------------------------------------------------------------------------------------------
# What a fetch runs
# ------------------------------------------------------------------------------------------------------------

# The op types evaluations/torch_graph.py executes (its SUPPORTED_OPS, the same set): an inference graph's
# arithmetic, nothing that reads or writes files, runs Python or touches strings. Both backends refuse a graph
# with any other op on the fetch path before anything runs.
ALLOWED_OPS = frozenset({
    "Const", "Placeholder", "Identity", "StopGradient", "CheckNumerics", "Cast", "ExpandDims", "Squeeze",
    "Reshape", "ResizeBilinear", "Add", "AddV2", "Sub", "Mul", "RealDiv", "Maximum", "Minimum", "BiasAdd",
    "Relu", "Relu6", "Conv2D", "MaxPool", "AvgPool", "BatchNormWithGlobalNormalization", "FusedBatchNorm",
    "FusedBatchNormV3", "Concat", "ConcatV2", "Mean", "MatMul", "Softmax"})


def _tensor_ref(text: str) -> tuple[str, int]:
    name, _, index = text.partition(":")
    return name, int(index or 0)


def fetch_path(graph: GraphDef, path: str, feed: str, fetches: Iterable[str]) -> list[str]:
    """Names of the nodes that computing `fetches` ("node" or "node:i") runs, as TensorFlow runs them: every
    data and control input followed, the data inputs that read the fed tensor `feed` excepted. ValueError
    naming `path` for a fetch or an input that names no node of the graph."""
    nodes = {n.name: n for n in graph.nodes}
    feed_ref = _tensor_ref(feed)
    stack = []
    for text in fetches:
        if _tensor_ref(text)[0] not in nodes:
            raise ValueError(f"{path}: no tensor {text}; is it the ADM Inception graph?")
        stack.append(_tensor_ref(text)[0])
    seen, visited = [], set()
    while stack:
        name = stack.pop()
        if name in visited:
            continue
        visited.add(name)
        node = nodes.get(name)
        if node is None:
            raise ValueError(f"{path}: an input names node '{name}', which the graph does not have")
        seen.append(name)
        for text in node.inputs:
            if text.startswith("^"):
                stack.append(text[1:])
            elif _tensor_ref(text) != feed_ref:
                stack.append(_tensor_ref(text)[0])
    return seen


def check_allowed_ops(graph: GraphDef, path: str, feed: str, fetches: Iterable[str]) -> list[str]:
    """fetch_path(...), or a ValueError naming the first node on it whose op type is not in ALLOWED_OPS
    (WriteFile, ReadFile, PyFunc, ...) or that is a constant of more than MAX_EXPANDED_ELEMENTS elements
    stored as one value (a few bytes that would take gigabytes once run): checked on the parsed file, before
    any backend sees it."""
    names = fetch_path(graph, path, feed, fetches)
    nodes = {n.name: n for n in graph.nodes}
    for name in names:
        node = nodes[name]
        if node.op not in ALLOWED_OPS:
            raise ValueError(f"{path}: node '{name}' has op type '{node.op}', which the evaluator does not "
                             f"run (evaluations/graphdef.py ALLOWED_OPS lists the ones it does)")
        value = node.attrs.get("value") if node.op == "Const" else None
        if isinstance(value, np.ndarray) and value.size > MAX_EXPANDED_ELEMENTS and 0 in value.strides:
            raise ValueError(f"{path}: constant '{name}' declares {value.size} elements of shape "
                             f"{value.shape} but stores one value; the evaluator does not expand it")
    return names
