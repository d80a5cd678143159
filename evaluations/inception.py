"""The ADM evaluator's Inception-v3 network: locating `classify_image_graph_def.pb` and running it with TensorFlow 2.

Protocol (openai/guided-diffusion evaluations/evaluator.py; ../shared/reference/sit-repa-adm.md section 4.1):
- the TF "inception-2015-12-05" GraphDef, imported with tf.compat.v1, its `ExpandDims:0` tensor replaced by a float32
  NHWC placeholder holding 0..255 pixels (the graph's own bilinear resize to 299 and (x - 128) / 128 run inside);
- `pool_3:0` (N, 1, 1, 2048) flattened -> FID and precision/recall features;
- `mixed_6/conv:0` (N, 17, 17, 192), first 7 channels, flattened in HWC order -> 2023-d sFID features;
- `softmax/logits/MatMul`: its second input is the (2048, 1008) weight; IS logits = pool_3 @ W without the bias.

The graph file is never downloaded. TensorFlow is imported only when a network is built.
"""
import os

import numpy as np

GRAPH_FILE = "classify_image_graph_def.pb"
GRAPH_ENV = "ADM_INCEPTION_GRAPH"
GRAPH_URL = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/classify_image_graph_def.pb"

INPUT_TENSOR = "ExpandDims:0"
POOL_TENSOR = "pool_3:0"
SPATIAL_TENSOR = "mixed_6/conv:0"
SOFTMAX_MATMUL_OP = "softmax/logits/MatMul"
SPATIAL_CHANNELS = 7
POOL_DIM = 2048
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS      # 2023


def default_graph_path() -> str:
    from evaluations.common import cache_dir
    return os.path.join(cache_dir(), GRAPH_FILE)


def resolve_graph_path(path: str = None) -> str:
    """The Inception graph to use: `path` (--inception), else $ADM_INCEPTION_GRAPH, else the cache folder
    ($SIT_SRA_CACHE or ~/.cache/sit_sra). Raises FileNotFoundError naming the file and where to put it."""
    if path:
        source, candidate = "--inception", path
    elif os.environ.get(GRAPH_ENV):
        source, candidate = f"${GRAPH_ENV}", os.environ[GRAPH_ENV]
    else:
        source, candidate = "the cache folder", default_graph_path()
    candidate = os.path.expanduser(candidate)
    if os.path.isfile(candidate):
        return candidate
    raise FileNotFoundError(
        f"Inception graph {GRAPH_FILE} not found at {candidate} (from {source}). This evaluator never downloads "
        f"it. Get the ADM evaluator's file (about 95 MB) from\n  {GRAPH_URL}\nand either pass --inception PATH, "
        f"set {GRAPH_ENV}=PATH, or put it at {default_graph_path()}")


def _import_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")     # keep TF's C++ start-up chatter out of the output
    try:
        import tensorflow as tf
    except ImportError as e:
        raise ImportError(f"the ADM evaluator needs TensorFlow 2 (pip install tensorflow): {e}") from None
    return tf


class InceptionNet:
    """The imported graph in its own tf.compat.v1 Session.

    features(images) -> (pool (N, 2048) float32, spatial (N, 2023) float32) for uint8 (N, H, W, 3) images;
    softmax_weight: the (2048, 1008) float32 IS weight.
    """

    def __init__(self, graph_path: str):
        tf = _import_tensorflow()
        tf1 = tf.compat.v1
        self.graph_path = graph_path
        graph_def = tf1.GraphDef()
        with open(graph_path, "rb") as f:
            try:
                graph_def.ParseFromString(f.read())
            except Exception as e:
                raise ValueError(f"{graph_path}: not a TensorFlow GraphDef ({e})") from None
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.images = tf1.placeholder(tf.float32, [None, None, None, 3], name="images")   # 0..255 NHWC
            try:
                pool, spatial, matmul = tf1.import_graph_def(
                    graph_def, input_map={INPUT_TENSOR: self.images},
                    return_elements=[POOL_TENSOR, SPATIAL_TENSOR, SOFTMAX_MATMUL_OP], name="inception")
            except (ValueError, KeyError) as e:
                raise ValueError(f"{graph_path}: missing one of {INPUT_TENSOR}, {POOL_TENSOR}, {SPATIAL_TENSOR}, "
                                 f"{SOFTMAX_MATMUL_OP} ({e}); is it the ADM Inception graph?") from None
            self.pool = pool                                                  # (N, 1, 1, 2048)
            self.spatial = spatial[..., :SPATIAL_CHANNELS]                    # (N, 17, 17, 7)
            weight = matmul.inputs[1]                                         # (2048, 1008)
        config = tf1.ConfigProto(allow_soft_placement=True)
        config.gpu_options.allow_growth = True          # on a GPU, leave memory to the sampler / other processes
        self.session = tf1.Session(graph=self.graph, config=config)
        self.softmax_weight = np.asarray(self.session.run(weight), dtype=np.float32)
        if self.softmax_weight.shape[0] != POOL_DIM:
            raise ValueError(f"{graph_path}: softmax weight has shape {self.softmax_weight.shape}, expected "
                             f"({POOL_DIM}, classes)")

    def features(self, images: np.ndarray):
        """uint8 (N, H, W, 3) -> pool (N, 2048), spatial (N, 2023) (HWC flattening), both float32."""
        pool, spatial = self.session.run([self.pool, self.spatial], {self.images: images.astype(np.float32)})
        n = images.shape[0]
        pool, spatial = pool.reshape(n, -1), spatial.reshape(n, -1)
        if pool.shape[1] != POOL_DIM or spatial.shape[1] != SPATIAL_DIM:
            raise ValueError(f"{self.graph_path}: features have {pool.shape[1]} / {spatial.shape[1]} dims, expected "
                             f"{POOL_DIM} / {SPATIAL_DIM}")
        return pool, spatial

    def class_probs(self, pool: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """IS class probabilities softmax(pool @ W) (no bias, as ADM), float32 (N, 1008), in batches of 512."""
        from evaluations.metrics import softmax
        out = np.empty((pool.shape[0], self.softmax_weight.shape[1]), dtype=np.float32)
        for i in range(0, pool.shape[0], batch_size):
            out[i:i + batch_size] = softmax(pool[i:i + batch_size].astype(np.float32) @ self.softmax_weight)
        return out

    def close(self):
        self.session.close()


def read_activations(net: InceptionNet, path: str, key: str = "arr_0", batch_size: int = 64,
                     progress: bool = True):
    """Streams uint8 NHWC images from `path`[key] through the network in file order, `batch_size` at a time.
    Returns (pool (N, 2048), spatial (N, 2023)) float32 arrays."""
    from tqdm.auto import tqdm

    from evaluations.common import NpzArrayReader, check_images_array
    with NpzArrayReader(path, key) as reader:
        check_images_array(path, key, reader.shape, reader.dtype)
        pools, spatials = [], []
        with tqdm(total=len(reader), desc=f"inception {os.path.basename(path)}", unit="img",
                  disable=not progress) as bar:
            for batch in reader.batches(batch_size):
                pool, spatial = net.features(batch)
                pools.append(pool)
                spatials.append(spatial)
                bar.update(batch.shape[0])
    return np.concatenate(pools), np.concatenate(spatials)
