"""The ADM evaluator's Inception-v3 network: locating `classify_image_graph_def.pb` and running it, in PyTorch
(evaluations/torch_graph.py executes the graph file itself, no TensorFlow) or in TensorFlow 2 (tf.compat.v1).

Protocol (openai/guided-diffusion evaluations/evaluator.py), the same for both backends:
- the TF "inception-2015-12-05" GraphDef, its `ExpandDims:0` tensor replaced by float32 NHWC images holding
  0..255 pixels (the graph's own bilinear resize to 299 and (x - 128) / 128 run inside);
- `pool_3:0` (N, 1, 1, 2048) flattened -> FID and precision/recall features;
- `mixed_6/conv:0` (N, 17, 17, 192), first 7 channels, flattened in HWC order -> 2023-d sFID features;
- `softmax/logits/MatMul`: its second input is the (2048, 1008) weight; IS logits = pool_3 @ W without the
  bias.

The graph file is never downloaded. TensorFlow is imported only when a TF network is built.
"""
import importlib.util
import os

import numpy as np
from tqdm.auto import tqdm

from evaluations.common import NpzArrayReader, cache_dir, check_images_array
from evaluations.graphdef import check_allowed_ops, read_graph_def
from evaluations.metrics import softmax

GRAPH_FILE = "classify_image_graph_def.pb"
GRAPH_ENV = "ADM_INCEPTION_GRAPH"
GRAPH_URL = ("https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/"
             "classify_image_graph_def.pb")

INPUT_TENSOR = "ExpandDims:0"
POOL_TENSOR = "pool_3:0"
SPATIAL_TENSOR = "mixed_6/conv:0"
SOFTMAX_MATMUL_OP = "softmax/logits/MatMul"
SPATIAL_CHANNELS = 7
POOL_DIM = 2048
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS      # 2023


def default_graph_path() -> str:
    return os.path.join(cache_dir(), GRAPH_FILE)


def resolve_graph_path(path: str | None = None) -> str:
    """The Inception graph to use: `path` (--inception), else $ADM_INCEPTION_GRAPH, else the cache folder
    ($SIT_SRA_CACHE or ~/.cache/sit_sra). Raises FileNotFoundError naming the file and where to put it."""
    if path:
        source = "--inception"
        candidate = path
    elif os.environ.get(GRAPH_ENV):
        source = f"${GRAPH_ENV}"
        candidate = os.environ[GRAPH_ENV]
    else:
        source = "the cache folder"
        candidate = default_graph_path()
    candidate = os.path.expanduser(candidate)
    if os.path.isfile(candidate):
        return candidate
    raise FileNotFoundError(
        f"Inception graph {GRAPH_FILE} not found at {candidate} (from {source}). This evaluator never "
        f"downloads it. Get the ADM evaluator's file (about 95 MB) from\n  {GRAPH_URL}\nand either pass "
        f"--inception PATH, set {GRAPH_ENV}=PATH, or put it at {default_graph_path()}")


def _import_tensorflow():
    # keep TF's C++ start-up chatter out of the output
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # triton's extension segfaults when it loads after TensorFlow (measured with TF 2.21), and torch imports
    # it lazily during training: in a process that uses both, load it first
    if importlib.util.find_spec("triton") is not None and importlib.util.find_spec("tensorflow") is not None:
        import triton.runtime  # noqa: F401
    try:
        import tensorflow as tf
    except ImportError as e:
        raise ImportError(f"--backend tf needs TensorFlow 2 (pip install -r requirements-eval.txt), or use "
                          f"--backend torch: {e}") from None
    return tf


BACKENDS = ("torch", "tf")


class InceptionNet:
    """features(images) -> (pool (N, 2048) float32, spatial (N, 2023) float32) for uint8 (N, H, W, 3) images;
    softmax_weight: the (2048, 1008) float32 IS weight; class_probs(pool) -> the IS class probabilities."""
    backend = None
    device = None

    def _check_softmax_weight(self):
        if self.softmax_weight.ndim != 2 or self.softmax_weight.shape[0] != POOL_DIM:
            raise ValueError(f"{self.graph_path}: softmax weight has shape {self.softmax_weight.shape}, "
                             f"expected ({POOL_DIM}, classes)")

    def _flatten(self, pool, spatial):
        n = pool.shape[0]
        pool = pool.reshape(n, -1)
        spatial = spatial.reshape(n, -1)
        if pool.shape[1] != POOL_DIM or spatial.shape[1] != SPATIAL_DIM:
            raise ValueError(f"{self.graph_path}: features have {pool.shape[1]} / {spatial.shape[1]} dims, "
                             f"expected {POOL_DIM} / {SPATIAL_DIM}")
        return pool, spatial

    def class_probs(self, pool: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """IS class probabilities softmax(pool @ W) (no bias, as ADM), float32 (N, 1008), in batches of
        512."""
        out = np.empty((pool.shape[0], self.softmax_weight.shape[1]), dtype=np.float32)
        for i in range(0, pool.shape[0], batch_size):
            out[i:i + batch_size] = softmax(pool[i:i + batch_size].astype(np.float32) @ self.softmax_weight)
        return out

    def close(self) -> None:
        pass


class TorchInceptionNet(InceptionNet):
    """The graph file executed op by op in PyTorch (evaluations/torch_graph.py), fp32 (no TF32) on `device`.
    check_numerics: the graph's CheckNumerics nodes raise on NaN / Inf (as in TF); False skips them."""
    backend = "torch"

    def __init__(self, graph_path: str, device: str | None = None, check_numerics: bool = True):
        # torch only here: the TF backend and the metric math run without importing it
        import torch

        from evaluations.torch_graph import GraphExecutor
        self.graph_path = graph_path
        self.device = str(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.check_numerics = check_numerics
        graph = read_graph_def(graph_path)
        # the checks the TF backend makes too (the executor refuses unknown ops itself, as it plans)
        check_allowed_ops(graph, graph_path, INPUT_TENSOR, [POOL_TENSOR, SPATIAL_TENSOR, SOFTMAX_MATMUL_OP])
        self.executor = GraphExecutor(graph, graph_path, INPUT_TENSOR, [POOL_TENSOR, SPATIAL_TENSOR],
                                      self.device, check_numerics)
        self.softmax_weight = self.executor.constant(SOFTMAX_MATMUL_OP, 1).float().cpu().numpy()
        self._check_softmax_weight()

    def features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, H, W, 3) -> pool (N, 2048), spatial (N, 2023) (HWC flattening), both float32."""
        pool, spatial = self.executor.run(images.astype(np.float32))
        pool, spatial = self._flatten(pool, spatial[..., :SPATIAL_CHANNELS])
        return pool.float().cpu().numpy(), spatial.float().cpu().numpy()


class TFInceptionNet(InceptionNet):
    """The imported graph in its own tf.compat.v1 Session (TensorFlow places it)."""
    backend = "tf"
    device = "tensorflow placement"

    def __init__(self, graph_path: str):
        # the torch executor's op allow-list, on this reader's parse, before TensorFlow sees the file
        keep = set(check_allowed_ops(read_graph_def(graph_path), graph_path, INPUT_TENSOR,
                                     [POOL_TENSOR, SPATIAL_TENSOR, SOFTMAX_MATMUL_OP]))
        tf = _import_tensorflow()
        tf1 = tf.compat.v1
        self.graph_path = graph_path
        full = tf1.GraphDef()
        with open(graph_path, "rb") as f:
            try:
                full.ParseFromString(f.read())
            except Exception as e:
                raise ValueError(f"{graph_path}: not a TensorFlow GraphDef ({e})") from None
        # only the checked nodes are imported (what no fetch runs is never built); the fed tensor's node
        # becomes a bare placeholder, so that its inputs (the JPEG decoder) are left out too
        graph_def = tf1.GraphDef()
        graph_def.versions.CopyFrom(full.versions)
        graph_def.node.extend(n for n in full.node if n.name in keep)
        feed_node = INPUT_TENSOR.split(":")[0]
        if feed_node not in keep:
            placeholder = graph_def.node.add(name=feed_node, op="Placeholder")
            placeholder.attr["dtype"].type = tf.float32.as_datatype_enum
        self.graph = tf.Graph()
        with self.graph.as_default():
            # 0..255 NHWC
            self.images = tf1.placeholder(tf.float32, [None, None, None, 3], name="images")
            try:
                pool, spatial, matmul = tf1.import_graph_def(
                    graph_def, input_map={INPUT_TENSOR: self.images},
                    return_elements=[POOL_TENSOR, SPATIAL_TENSOR, SOFTMAX_MATMUL_OP], name="inception")
            except (ValueError, KeyError) as e:
                raise ValueError(f"{graph_path}: missing one of {INPUT_TENSOR}, {POOL_TENSOR}, "
                                 f"{SPATIAL_TENSOR}, {SOFTMAX_MATMUL_OP} ({e}); is it the ADM Inception "
                                 f"graph?") from None
            self.pool = pool                                                  # (N, 1, 1, 2048)
            self.spatial = spatial[..., :SPATIAL_CHANNELS]                    # (N, 17, 17, 7)
            weight = matmul.inputs[1]                                         # (2048, 1008)
        config = tf1.ConfigProto(allow_soft_placement=True)
        # on a GPU, leave memory to the sampler / other processes
        config.gpu_options.allow_growth = True
        self.session = tf1.Session(graph=self.graph, config=config)
        self.softmax_weight = np.asarray(self.session.run(weight), dtype=np.float32)
        self._check_softmax_weight()
        self._tf_errors = tf.errors

    def features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, H, W, 3) -> pool (N, 2048), spatial (N, 2023) (HWC flattening), both float32."""
        try:
            pool, spatial = self.session.run([self.pool, self.spatial],
                                             {self.images: images.astype(np.float32)})
        # CheckNumerics: one line, not TF's stack trace
        except self._tf_errors.InvalidArgumentError as e:
            raise ValueError(f"TensorFlow: {e.message.splitlines()[0]}") from None
        return self._flatten(pool, spatial)

    def close(self) -> None:
        self.session.close()


def load_network(graph_path: str, backend: str = "torch", device: str | None = None,
                 check_numerics: bool = True) -> InceptionNet:
    """The Inception network on `backend` ("torch": this repo's executor, "tf": TensorFlow)."""
    if backend == "torch":
        return TorchInceptionNet(graph_path, device, check_numerics)
    if backend == "tf":
        if device is not None:
            raise ValueError("--device applies to --backend torch (TensorFlow places the graph itself)")
        if not check_numerics:
            raise ValueError("--no-check-numerics applies to --backend torch (the TF graph always checks)")
        return TFInceptionNet(graph_path)
    raise ValueError(f"--backend {backend}: choose one of {', '.join(BACKENDS)}")


def read_activations(net: InceptionNet, path: str, key: str = "arr_0", batch_size: int = 64,
                     progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Streams uint8 NHWC images from `path`[key] through the network in file order, `batch_size` at a time.
    Returns (pool (N, 2048), spatial (N, 2023)) float32 arrays. A non-finite activation is a ValueError naming
    the file, the batch and (torch backend) the graph node."""
    with NpzArrayReader(path, key) as reader:
        check_images_array(path, key, reader.shape, reader.dtype)
        pools, spatials = [], []
        with tqdm(total=len(reader), desc=f"inception {os.path.basename(path)}", unit="img",
                  disable=not progress) as bar:
            for index, batch in enumerate(reader.batches(batch_size)):
                try:
                    pool, spatial = net.features(batch)
                except ValueError as e:
                    first = index * batch_size
                    raise ValueError(f"{path}: batch {index} (images {first}..{first + len(batch) - 1}): "
                                     f"{e}") from None
                pools.append(pool)
                spatials.append(spatial)
                bar.update(batch.shape[0])
    return np.concatenate(pools), np.concatenate(spatials)
