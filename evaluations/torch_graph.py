"""Runs a frozen TensorFlow GraphDef (evaluations/graphdef.py) in PyTorch, op by op, with TF's semantics.

    ex = GraphExecutor(graph_def, "graph.pb", feed="ExpandDims:0", fetches=["pool_3:0", "mixed_6/conv:0"],
                       device="cuda", check_numerics=True)
    pool, spatial = ex.run(images_nhwc_float32)      # numpy in, torch tensors out, each in TF's NHWC layout
    ex.constant("softmax/logits/MatMul", 1)          # the value of a node input that needs no feed

Only the nodes the fetches need are run (the graph's JPEG decoder above the feed never is), and only op types
in SUPPORTED_OPS: an unknown op in that part of the graph is an error naming the op and the node before
anything runs, so a graph file cannot make this executor read or write files, run Python or touch strings.
Layout: every tensor has TF's logical shape (NHWC for images). Rank-4 activations are kept physically as NCHW
(torch's convolution layout) inside `Nchw`; ops whose meaning depends on the axis order (Reshape, Squeeze,
MatMul, Mean, Concat axes, BiasAdd, broadcasting against constants) see the logical NHWC tensor.
Matches TF1 where it differs from torch: SAME padding (asymmetric, the extra row/column after), AvgPool
excluding the padded cells, ResizeBilinear's align_corners=False / half_pixel_centers=False sampling (TF1's
default). CheckNumerics: when on, every CheckNumerics node the fetches depend on (TF wires them as control
inputs) is checked, with one device-to-host copy per run; the first non-finite one in graph order is reported.
"""
import numpy as np
import torch
import torch.nn.functional as F

from evaluations.graphdef import DTYPE_NAMES, DTYPES, GraphDef


class NonFiniteActivation(ValueError):
    def __init__(self, node: str, checked: str):
        super().__init__(f"non-finite activation (NaN or Inf) at node '{node}' (it checks '{checked}')")
        self.node, self.checked = node, checked


class Nchw:
    """A rank-4 tensor whose logical (TF) layout is NHWC, stored as NCHW."""
    __slots__ = ("x",)

    def __init__(self, x: torch.Tensor):
        self.x = x


def logical(v: "Nchw | torch.Tensor") -> torch.Tensor:
    return v.x.permute(0, 2, 3, 1) if isinstance(v, Nchw) else v


def physical(v: "Nchw | torch.Tensor") -> torch.Tensor:
    """NCHW torch tensor of a rank-4 NHWC value."""
    if isinstance(v, Nchw):
        return v.x
    if v.dim() != 4:
        raise ValueError(f"expected a rank-4 NHWC tensor, got shape {tuple(v.shape)}")
    return v.permute(0, 3, 1, 2)


def _broadcast_physical(v):
    """A value broadcast against an NCHW-stored activation: logical rank <= 4 -> its NCHW arrangement."""
    if isinstance(v, Nchw):
        return v.x
    if v.dim() > 4:
        raise ValueError(f"cannot broadcast shape {tuple(v.shape)} against a rank-4 activation")
    return v.reshape((1,) * (4 - v.dim()) + tuple(v.shape)).permute(0, 3, 1, 2)


def _s(attrs, key, default=None):
    v = attrs.get(key, default)
    return v.decode() if isinstance(v, bytes) else v


def _same_pads(size, k, s, d):
    """TF's SAME padding for one spatial dimension: (before, after), the odd cell after."""
    k_eff = (k - 1) * d + 1
    out = -(-size // s)
    total = max((out - 1) * s + k_eff - size, 0)
    return total // 2, total - total // 2


def _spatial_pads(node, x, kernel, strides, dilations):
    padding = _s(node.attrs, "padding", "VALID")
    if padding == "VALID":
        return (0, 0), (0, 0)
    if padding == "SAME":
        return tuple(_same_pads(x.shape[2 + i], kernel[i], strides[i], dilations[i]) for i in range(2))
    if padding == "EXPLICIT":
        p = node.attrs.get("explicit_paddings") or [0] * 8
        return (p[2], p[3]), (p[4], p[5])
    raise ValueError(f"node '{node.name}' ({node.op}): padding {padding} is not supported")


def _nhwc_attr(node, key, default=(1, 1, 1, 1)):
    """(h, w) of an NHWC-ordered 4-list attribute (strides, ksize, dilations)."""
    v = node.attrs.get(key) or list(default)
    if len(v) != 4 or v[0] != 1 or v[3] != 1:
        raise ValueError(f"node '{node.name}' ({node.op}): {key} {v} is not [1, h, w, 1]")
    return v[1], v[2]


def _check_nhwc(node):
    fmt = _s(node.attrs, "data_format", "NHWC")
    if fmt != "NHWC":
        raise ValueError(f"node '{node.name}' ({node.op}): data_format {fmt} is not supported (only NHWC)")


def _pad_nchw(x, pads, value=0.0):
    (t, b), (left, r) = pads
    return F.pad(x, (left, r, t, b), value=value) if any((t, b, left, r)) else x


def _resize_axis(in_size, out_size, align_corners, half_pixel):
    """TF's ResizeBilinear sampling along one axis, in float32 as its kernel computes it: lower, upper,
    lerp."""
    if align_corners and out_size > 1:
        scale = np.float32(in_size - 1) / np.float32(out_size - 1)
    else:
        scale = np.float32(in_size) / np.float32(out_size)
    i = np.arange(out_size, dtype=np.float32)
    src = (i + np.float32(0.5)) * scale - np.float32(0.5) if half_pixel else i * scale
    floor = np.floor(src)
    lower = np.maximum(floor, 0).astype(np.int64)
    upper = np.minimum(np.ceil(src), in_size - 1).astype(np.int64)
    return lower, upper, (src - floor).astype(np.float32)


TORCH_DTYPES = {np.dtype(k): v for k, v in {
    np.float32: torch.float32, np.float64: torch.float64, np.int32: torch.int32, np.uint8: torch.uint8,
    np.int16: torch.int16, np.int8: torch.int8, np.int64: torch.int64, np.bool_: torch.bool,
    np.float16: torch.float16}.items()}


class GraphExecutor:
    def __init__(self, graph: GraphDef, path: str, feed: str, fetches: list[str], device: str = "cpu",
                 check_numerics: bool = True):
        self.path = path
        self.device = torch.device(device)
        self.check_numerics = check_numerics
        self.nodes = {}
        for node in graph.nodes:
            if node.name in self.nodes:
                raise ValueError(f"{path}: two nodes are named '{node.name}'")
            self.nodes[node.name] = node
        self.feed = self._ref(feed)
        if self.feed[0] not in self.nodes:
            raise ValueError(f"{path}: no tensor {feed} (the input this evaluator feeds); is it the ADM "
                             f"Inception graph?")
        self.fetches = [self._ref(f) for f in fetches]
        for (name, _), text in zip(self.fetches, fetches):
            if name not in self.nodes:
                raise ValueError(f"{path}: no tensor {text}; is it the ADM Inception graph?")
        self.plan, self.fed = self._order([name for name, _ in self.fetches])
        self._conv_bn, self._passthrough = {}, set()
        # node name -> list of outputs, for nodes that need no feed
        self.values = {}
        self._filters = {}
        self._fold_constants()
        self._fuse_batch_norms()

    # ---- graph structure ----------------------------------------------------------------------------------
    @staticmethod
    def _ref(text: str):
        name, _, index = text.partition(":")
        return name, int(index or 0)

    def _deps(self, node):
        """(node name, output index) data inputs and control-input names of `node`, feed excluded."""
        data, control = [], []
        for text in node.inputs:
            if text.startswith("^"):
                control.append(text[1:])
            else:
                data.append(self._ref(text))
        return data, control

    def _order(self, targets):
        """Topological order of the nodes `targets` need (data inputs; control inputs when CheckNumerics is
        on), stopping at the feed. Raises on a missing node, an unknown op or a cycle."""
        order = []
        state = {}
        fed = set()
        stack = [(t, False) for t in reversed(targets)]
        while stack:
            name, expanded = stack.pop()
            if expanded:
                state[name] = 2
                order.append(name)
                continue
            if state.get(name) == 2:
                continue
            if state.get(name) == 1:
                raise ValueError(f"{self.path}: the graph has a cycle through node '{name}'")
            node = self.nodes.get(name)
            if node is None:
                raise ValueError(f"{self.path}: an input names node '{name}', which the graph does not have")
            if node.op not in SUPPORTED_OPS:
                raise ValueError(f"{self.path}: node '{name}' has op type '{node.op}', which this executor "
                                 f"does not run (evaluations/torch_graph.py SUPPORTED_OPS lists the ones it "
                                 f"does)")
            state[name] = 1
            stack.append((name, True))
            data, control = self._deps(node)
            for n, i in data:
                if i != 0 and (n, i) != self.feed:
                    raise ValueError(f"{self.path}: node '{name}' reads output {i} of '{n}'; this executor "
                                     f"runs single-output ops only")
            children = [n for n, i in data if (n, i) != self.feed]
            fed.update(name for n, i in data if (n, i) == self.feed)
            if self.check_numerics:
                children += control
            for child in reversed(children):
                if state.get(child) != 2:
                    stack.append((child, False))
        return order, fed

    def _fold_constants(self):
        """Evaluates, once, every planned node that does not depend on the feed (weights, shapes, axes)."""
        dynamic = set()
        for name in self.plan:
            node = self.nodes[name]
            data, control = self._deps(node)
            if name in self.fed or any(n in dynamic for n, _ in data) or \
                    (self.check_numerics and any(c in dynamic for c in control)):
                dynamic.add(name)
            else:
                self.values[name] = self._eval(node, [self.values[n][i] for n, i in data], [])
        self.dynamic = [n for n in self.plan if n in dynamic]
        # per step of the run, the feed-dependent values no later node reads (freed as the run goes)
        last = {}
        for step, name in enumerate(self.dynamic):
            for n, _ in self._deps(self.nodes[name])[0]:
                if n in dynamic:
                    last[n] = step
        keep = {n for n, _ in self.fetches}
        self._free_after = [[] for _ in self.dynamic]
        for step, name in enumerate(self.dynamic):
            if name not in keep:
                # unread ones (CheckNumerics) at once
                self._free_after[last.get(name, step)].append(name)

    def _fuse_batch_norms(self):
        """A Conv2D whose only consumer is a batch norm of constants runs as one convolution with the folded
        weight w * s and bias beta - mean * s (s = gamma / sqrt(var + eps), folded in float64); the batch norm
        node then passes its input on. Same values up to float32 rounding, one pass over memory fewer."""
        consumers = {}
        for name in self.dynamic:
            for n, _ in self._deps(self.nodes[name])[0]:
                consumers[n] = consumers.get(n, 0) + 1
        fetched = {n for n, _ in self.fetches}
        self._conv_bn, self._passthrough = {}, set()
        for name in self.dynamic:
            node = self.nodes[name]
            if node.op not in ("BatchNormWithGlobalNormalization", "FusedBatchNorm", "FusedBatchNormV3"):
                continue
            data = self._deps(node)[0]
            conv = self.nodes[data[0][0]]
            params = [n for n, _ in data[1:5]]
            if conv.op != "Conv2D" or consumers.get(conv.name) != 1 or conv.name in fetched or \
                    not all(p in self.values for p in params) or \
                    self._deps(conv)[0][1][0] not in self.values:
                continue
            p = [logical(self.values[n][0]).double() for n in params]
            if node.op == "BatchNormWithGlobalNormalization":
                mean, var, beta, gamma = p
                scale = torch.rsqrt(var + node.attrs.get("variance_epsilon", 0.0))
                if node.attrs.get("scale_after_normalization", False):
                    scale = scale * gamma
            else:
                if node.attrs.get("is_training", True):
                    continue
                gamma, beta, mean, var = p
                scale = torch.rsqrt(var + node.attrs.get("epsilon", 1e-4)) * gamma
            w = logical(self.values[self._deps(conv)[0][1][0]][0]).double()          # HWIO
            weight = (w * scale).permute(3, 2, 0, 1).float().contiguous()
            self._conv_bn[conv.name] = (weight, (beta - mean * scale).float())
            self._passthrough.add(name)

    def constant(self, name: str, index: int) -> torch.Tensor:
        """The value of input `index` of node `name`, computed without the feed (e.g. the softmax weight)."""
        node = self.nodes.get(name)
        if node is None:
            raise ValueError(f"{self.path}: no node {name}; is it the ADM Inception graph?")
        data, _ = self._deps(node)
        if index >= len(data):
            raise ValueError(f"{self.path}: node '{name}' has {len(data)} inputs, not {index + 1}")
        src, out = data[index]
        if (src, out) == self.feed:
            raise ValueError(f"{self.path}: input {index} of '{name}' is the fed image tensor, "
                             f"not a constant")
        if src not in self.values:
            plan, fed = self._order([src])
            if fed:
                raise ValueError(f"{self.path}: input {index} of '{name}' depends on the images")
            for n in plan:
                if n not in self.values:
                    d, _ = self._deps(self.nodes[n])
                    self.values[n] = self._eval(self.nodes[n], [self.values[a][b] for a, b in d], [])
        return logical(self.values[src][out])

    # ---- running -------------------------------------------------------------------------------------------
    def run(self, feed_value: np.ndarray) -> list[torch.Tensor]:
        """Feed -> the fetched tensors (torch, logical TF layout, on self.device).
        Raises NonFiniteActivation."""
        x = torch.from_numpy(np.ascontiguousarray(feed_value)).to(self.device)
        values = dict(self.values)
        checks = []
        prev_mm = torch.backends.cuda.matmul.allow_tf32
        prev_cudnn = torch.backends.cudnn.allow_tf32
        # TF32 rounds matmul/convolution inputs to 10 mantissa bits (about 1e-3 relative per op): the features
        # would then differ from TensorFlow's fp32 ones by more than the evaluator's tolerance. Off while
        # running.
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        try:
            with torch.inference_mode():
                for name, free in zip(self.dynamic, self._free_after):
                    node = self.nodes[name]
                    data, _ = self._deps(node)
                    inputs = [x if (n, i) == self.feed else values[n][i] for n, i in data]
                    values[name] = self._eval(node, inputs, checks)
                    del inputs
                    for n in free:
                        del values[n]
                out = [logical(values[n][i]) for n, i in self.fetches]
                if checks:
                    bad = torch.stack([flag for _, flag in checks]).cpu().numpy()
                    if bad.any():
                        node = self.nodes[checks[int(np.argmax(bad))][0]]
                        raise NonFiniteActivation(node.name, node.inputs[0].split(":")[0])
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev_mm
            torch.backends.cudnn.allow_tf32 = prev_cudnn
        return out

    def _eval(self, node, inputs, checks):
        try:
            if node.name in self._passthrough:
                out = inputs[0]
            elif node.name in self._conv_bn:
                out = _conv2d(self, node, inputs, *self._conv_bn[node.name])
            else:
                out = SUPPORTED_OPS[node.op](self, node, inputs)
        except NonFiniteActivation:
            raise
        except (ValueError, RuntimeError, IndexError, TypeError, KeyError) as e:
            first_line = str(e).splitlines()[0]
            raise ValueError(f"{self.path}: node '{node.name}' ({node.op}) failed: {first_line}") from None
        raw = out.x if isinstance(out, Nchw) else out
        if node.op == "CheckNumerics" and raw.numel():
            # min and max in one pass: both finite exactly when every element is (NaN propagates through max)
            checks.append((node.name, ~torch.isfinite(torch.stack(torch.aminmax(raw))).all()))
        return [out]

    # ---- helpers for the ops -------------------------------------------------------------------------------
    def _static(self, v, what):
        """A small constant input (shape, axis, size) as a numpy array."""
        if isinstance(v, Nchw):
            v = logical(v)
        return v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)

    def _filter(self, node, w):
        """Conv2D filter HWIO -> torch OIHW, cached for constant filters."""
        key = node.inputs[1]
        if key in self._filters:
            return self._filters[key]
        w = logical(w).permute(3, 2, 0, 1).contiguous()
        if key.split(":")[0] in self.values:
            self._filters[key] = w
        return w


# ------------------------------------------------------------------------------------------------------------
# The ops: (executor, node, input values) -> output value
# ------------------------------------------------------------------------------------------------------------

def _const(ex, node, inputs):
    value = node.attrs.get("value")
    if value is None:
        raise ValueError("string or unsupported constant")
    t = torch.from_numpy(np.array(value))
    # integer constants are shapes and axes: kept on the CPU, so reading them never waits for the device
    return t.to(ex.device) if t.is_floating_point() else t


def _placeholder(ex, node, inputs):
    raise ValueError("a Placeholder the evaluator does not feed is needed")


def _identity(ex, node, inputs):
    return inputs[0]


def _cast(ex, node, inputs):
    dst = node.attrs.get("DstT")
    if dst not in DTYPES:
        raise ValueError(f"cast to {DTYPE_NAMES.get(dst, dst)} is not supported")
    dtype = TORCH_DTYPES[np.dtype(DTYPES[dst])]
    v = inputs[0]
    return Nchw(v.x.to(dtype)) if isinstance(v, Nchw) else v.to(dtype)


def _unary(fn):
    def op(ex, node, inputs):
        v = inputs[0]
        return Nchw(fn(v.x)) if isinstance(v, Nchw) else fn(v)
    return op


def _binary(fn):
    def op(ex, node, inputs):
        a, b = inputs
        if isinstance(a, Nchw) or isinstance(b, Nchw):
            return Nchw(fn(_broadcast_physical(a), _broadcast_physical(b)))
        return fn(a, b)
    return op


def _bias_add(ex, node, inputs):
    _check_nhwc(node)
    a, b = inputs
    if b.dim() != 1:
        raise ValueError(f"bias of shape {tuple(b.shape)} is not a vector")
    if isinstance(a, Nchw):
        return Nchw(a.x + b.reshape(1, -1, 1, 1))
    return a + b


def _conv2d(ex, node, inputs, weight=None, bias=None):
    _check_nhwc(node)
    x = physical(inputs[0])
    w = ex._filter(node, inputs[1]) if weight is None else weight
    strides, dilations = _nhwc_attr(node, "strides"), _nhwc_attr(node, "dilations")
    pads = _spatial_pads(node, x, w.shape[2:], strides, dilations)
    if pads[0][0] == pads[0][1] and pads[1][0] == pads[1][1]:
        return Nchw(F.conv2d(x, w, bias, stride=strides, padding=(pads[0][0], pads[1][0]),
                             dilation=dilations))
    return Nchw(F.conv2d(_pad_nchw(x, pads), w, bias, stride=strides, dilation=dilations))


def _max_pool(ex, node, inputs):
    _check_nhwc(node)
    x = physical(inputs[0])
    k, s = _nhwc_attr(node, "ksize"), _nhwc_attr(node, "strides")
    pads = _spatial_pads(node, x, k, s, (1, 1))
    return Nchw(F.max_pool2d(_pad_nchw(x, pads, float("-inf")), k, s))


def _avg_pool(ex, node, inputs):
    _check_nhwc(node)
    x = physical(inputs[0])
    k, s = _nhwc_attr(node, "ksize"), _nhwc_attr(node, "strides")
    pads = _spatial_pads(node, x, k, s, (1, 1))
    symmetric = pads[0][0] == pads[0][1] <= k[0] // 2 and pads[1][0] == pads[1][1] <= k[1] // 2
    if symmetric:
        # TF divides by the number of cells inside the image (the padded ones do not count)
        return Nchw(F.avg_pool2d(x, k, s, padding=(pads[0][0], pads[1][0]), count_include_pad=False))
    ones = torch.ones((1, 1) + tuple(x.shape[2:]), dtype=x.dtype, device=x.device)
    total = F.avg_pool2d(_pad_nchw(x, pads), k, s, divisor_override=1)
    count = F.avg_pool2d(_pad_nchw(ones, pads), k, s, divisor_override=1)
    return Nchw(total / count)


def _channel_params(x_value, *params):
    if isinstance(x_value, Nchw):
        return [p.reshape(1, -1, 1, 1) for p in params]
    return list(params)


def _batch_norm_global(ex, node, inputs):
    """BatchNormWithGlobalNormalization(t, mean, variance, beta, gamma): the 2015 Inception graph's op."""
    t, mean, var, beta, gamma = inputs
    eps = node.attrs.get("variance_epsilon", 0.0)
    factor = torch.rsqrt(var + eps)
    if node.attrs.get("scale_after_normalization", False):
        factor = factor * gamma
    mean, factor, beta = _channel_params(t, mean, factor, beta)
    x = t.x if isinstance(t, Nchw) else t
    out = (x - mean) * factor + beta
    return Nchw(out) if isinstance(t, Nchw) else out


def _fused_batch_norm(ex, node, inputs):
    _check_nhwc(node)
    if node.attrs.get("is_training", True):
        raise ValueError("is_training=True (batch statistics) is not an inference graph")
    t, scale, offset, mean, var = inputs[:5]
    factor = torch.rsqrt(var + node.attrs.get("epsilon", 1e-4)) * scale
    mean, factor, offset = _channel_params(t, mean, factor, offset)
    x = t.x if isinstance(t, Nchw) else t
    out = (x - mean) * factor + offset
    return Nchw(out) if isinstance(t, Nchw) else out


def _resize_bilinear(ex, node, inputs):
    x = physical(inputs[0]).float()
    out_h, out_w = (int(v) for v in ex._static(inputs[1], "size"))
    align, half = node.attrs.get("align_corners", False), node.attrs.get("half_pixel_centers", False)
    if align and half:
        raise ValueError("align_corners and half_pixel_centers cannot both be true")
    dev = x.device
    y0, y1, ly = (torch.from_numpy(a).to(dev) for a in _resize_axis(x.shape[2], out_h, align, half))
    x0, x1, lx = (torch.from_numpy(a).to(dev) for a in _resize_axis(x.shape[3], out_w, align, half))
    # TF's arithmetic in its order: top = tl + (tr - tl) * lx, bottom likewise, out = top + (bottom - top) *
    # ly; interpolating every input row along x first gives top and bottom for all output rows at once
    left = x[..., x0]
    rows = left + (x[..., x1] - left) * lx
    top = rows[:, :, y0]
    return Nchw(top + (rows[:, :, y1] - top) * ly[:, None])


def _reshape(ex, node, inputs):
    shape = [int(v) for v in ex._static(inputs[1], "shape").reshape(-1)]
    return logical(inputs[0]).reshape(shape)


def _expand_dims(ex, node, inputs):
    return logical(inputs[0]).unsqueeze(int(ex._static(inputs[1], "dim").reshape(-1)[0]))


def _squeeze(ex, node, inputs):
    x = logical(inputs[0])
    dims = node.attrs.get("squeeze_dims") or [d for d in range(x.dim()) if x.shape[d] == 1]
    for d in sorted((d % x.dim() for d in dims), reverse=True):
        if x.shape[d] != 1:
            raise ValueError(f"cannot squeeze dimension {d} of shape {tuple(x.shape)}")
        x = x.squeeze(d)
    return x


def _concat(values, axis):
    rank = (values[0].x.dim() if isinstance(values[0], Nchw) else values[0].dim())
    axis = axis % rank
    if all(isinstance(v, Nchw) for v in values):
        return Nchw(torch.cat([v.x for v in values], (0, 2, 3, 1)[axis]))
    return torch.cat([logical(v) for v in values], axis)


# Concat(concat_dim, values...): the 2015 graph's joins
def _concat_v1(ex, node, inputs):
    return _concat(inputs[1:], int(ex._static(inputs[0], "concat_dim")))


# ConcatV2(values..., axis)
def _concat_v2(ex, node, inputs):
    return _concat(inputs[:-1], int(ex._static(inputs[-1], "axis")))


def _mean(ex, node, inputs):
    axes = [int(a) for a in ex._static(inputs[1], "axes").reshape(-1)]
    return logical(inputs[0]).mean(dim=axes, keepdim=bool(node.attrs.get("keep_dims", False)))


def _matmul(ex, node, inputs):
    a, b = logical(inputs[0]), logical(inputs[1])
    if node.attrs.get("transpose_a", False):
        a = a.t()
    if node.attrs.get("transpose_b", False):
        b = b.t()
    return a @ b


def _softmax(ex, node, inputs):
    return torch.softmax(logical(inputs[0]), dim=-1)


SUPPORTED_OPS = {
    "Const": _const, "Placeholder": _placeholder,
    "Identity": _identity, "StopGradient": _identity, "CheckNumerics": _identity,
    "Cast": _cast, "ExpandDims": _expand_dims, "Squeeze": _squeeze, "Reshape": _reshape,
    "ResizeBilinear": _resize_bilinear,
    "Add": _binary(torch.add), "AddV2": _binary(torch.add), "Sub": _binary(torch.sub),
    "Mul": _binary(torch.mul), "RealDiv": _binary(torch.div), "Maximum": _binary(torch.maximum),
    "Minimum": _binary(torch.minimum), "BiasAdd": _bias_add,
    "Relu": _unary(torch.relu), "Relu6": _unary(lambda x: torch.clamp(x, 0.0, 6.0)),
    "Conv2D": _conv2d, "MaxPool": _max_pool, "AvgPool": _avg_pool,
    "BatchNormWithGlobalNormalization": _batch_norm_global,
    "FusedBatchNorm": _fused_batch_norm, "FusedBatchNormV3": _fused_batch_norm,
    "Concat": _concat_v1, "ConcatV2": _concat_v2, "Mean": _mean,
    "MatMul": _matmul, "Softmax": _softmax,
}
