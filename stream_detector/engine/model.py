"""The LSTM autoencoder and the batched scorer that training, replay and the service all share.

A window is scored by how badly the model, trained on normal data, reconstructs it. The scorer is
the only place a score is computed, so calibration at training time and detection at serving time
measure exactly the same quantity.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import structlog
import torch
from torch import Tensor, nn

from stream_detector.config import Settings

log = structlog.get_logger(__name__)


def select_device(preference: str) -> torch.device:
    """Resolve `model.device` once, at start: a missing GPU is a config error, not a late crash."""
    if preference not in ("auto", "cpu", "cuda"):
        raise ValueError(f"model.device must be 'auto', 'cpu' or 'cuda'; got {preference!r}")
    has_cuda = torch.cuda.is_available()
    if preference == "cuda" and not has_cuda:
        raise ValueError(
            "model.device is 'cuda' but no CUDA device is usable "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}); "
            "set model.device = 'auto' or 'cpu', or install a CUDA build of torch"
        )
    device = torch.device("cuda" if preference != "cpu" and has_cuda else "cpu")
    if device.type == "cuda":
        log.info(
            "model device selected",
            device=str(device),
            torch_version=torch.__version__,
            cuda_device=torch.cuda.get_device_name(device),
        )
    else:
        log.info("model device selected", device=str(device), torch_version=torch.__version__)
    return device


def ring_device(device_resident: str, device: torch.device) -> torch.device | None:
    """Where the window ring's values live for `model.device_resident`: the model's device, or
    None for numpy on the host. 'auto' keeps them on a GPU only: on the CPU numpy's ring is the
    faster of the two, and the model reads host memory anyway."""
    if device_resident not in ("auto", "on", "off"):
        raise ValueError(
            f"model.device_resident must be 'auto', 'on' or 'off'; got {device_resident!r}"
        )
    if device_resident == "on" or (device_resident == "auto" and device.type == "cuda"):
        return device
    return None


class LSTMAutoencoder(nn.Module):
    """Sequence-to-sequence autoencoder squeezing a window through a small latent vector.

    The bottleneck (latent_size) is what makes unusual windows reconstruct badly: the model can only
    afford to encode the patterns it saw often in training.
    """

    def __init__(
        self, n_features: int, window: int, hidden_size: int, num_layers: int, latent_size: int
    ) -> None:
        super().__init__()
        self.n_features = n_features
        self.window = window
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.latent_size = latent_size
        self.encoder = nn.LSTM(n_features, hidden_size, num_layers, batch_first=True)
        self.to_latent = nn.Linear(hidden_size, latent_size)
        self.from_latent = nn.Linear(latent_size, hidden_size)
        self.decoder = nn.LSTM(hidden_size, hidden_size, num_layers, batch_first=True)
        self.output = nn.Linear(hidden_size, n_features)

    def forward(self, x: Tensor) -> Tensor:
        """[B, W, F] -> reconstruction [B, W, F]."""
        if x.dim() != 3 or x.shape[1] != self.window or x.shape[2] != self.n_features:
            raise ValueError(
                f"expected windows of shape [B, {self.window}, {self.n_features}], "
                f"got {list(x.shape)}"
            )
        _, (hidden, _) = self.encoder(x)
        latent = self.to_latent(hidden[-1])
        # The decoder sees the same summary at every step and must unroll the window from it.
        seed = self.from_latent(latent).unsqueeze(1).expand(-1, self.window, -1)
        decoded, _ = self.decoder(seed)
        return self.output(decoded)


@dataclass(frozen=True)
class WindowScores:
    """Per-window results of one `WindowScorer.score` call, in input order.

    scores:              float32 [B]     mean squared reconstruction error over the scored
                                         steps (all W, or the newest `score_steps`) and F
    feature_errors:      float32 [B, F]  mean over the scored steps of the squared error per
                                         feature
    last_reconstruction: float32 [B, F]  reconstruction of the window's last step (normalised units)
    """

    scores: np.ndarray
    feature_errors: np.ndarray
    last_reconstruction: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def _window_results(model: LSTMAutoencoder, x: Tensor, score_steps: int) -> Tensor:
    """[b, W, F] windows -> [b, 1 + 2F]: score | feature errors | last-step reconstruction.

    The model reconstructs the whole window; the errors are averaged over its newest
    `score_steps` steps only when that is not 0, the older steps serving as context.
    """
    reconstruction = model(x)
    error = (reconstruction - x).square()
    if score_steps:
        error = error[:, -score_steps:, :]
    per_feature = error.mean(dim=1)
    score = per_feature.mean(dim=1, keepdim=True)
    return torch.cat([score, per_feature, reconstruction[:, -1, :]], dim=1)


class WindowScorer:
    """Scores normalised windows in micro-batches with a fixed memory ceiling on the device.

    Windows come as host numpy (each micro-batch then costs one host->device copy) or as a tensor
    already on the device (the device-resident engine: no copy at all). Every result stays on the
    device until the end, when all of them come back in a single device->host copy, so a GPU never
    stalls per micro-batch. On CUDA every micro-batch runs at the one shape [batch_size, W, F]
    (see `_FixedShapeForward`); on the CPU at the next of a short ladder of sizes
    (`_LadderForward`), which bounds the shapes torch caches state for.
    `score_steps` (window.score_steps): how many of a window's newest steps its score and
    feature errors average over; 0 = all of them.
    """

    def __init__(
        self,
        model: LSTMAutoencoder,
        device: torch.device,
        batch_size: int,
        cpu_threads: int = 0,
        cuda_graph: bool = True,
        score_steps: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= score_steps <= model.window:
            raise ValueError(f"score_steps must be in 0..{model.window}, got {score_steps}")
        self.model = model.to(device).eval()
        self.device = device
        self.batch_size = batch_size
        self._non_blocking = device.type == "cuda"
        self._threads = cpu_threads if device.type == "cpu" else 0
        results = functools.partial(_window_results, self.model, score_steps=score_steps)
        self._forward: Callable[[Tensor], Tensor] = (
            _FixedShapeForward(results, batch_size, cuda_graph)
            if device.type == "cuda"
            else _LadderForward(results, batch_size)
        )

    @classmethod
    def serving(
        cls, model: LSTMAutoencoder, device: torch.device, settings: Settings
    ) -> WindowScorer:
        """The scorer the service runs under `settings`: its inference batch, CPU threads, CUDA
        graph and scored steps (training and the benchmark's synthetic artefact choose their
        own)."""
        config = settings.model
        return cls(
            model,
            device,
            config.batch_size,
            config.cpu_threads,
            config.cuda_graph,
            settings.window.score_steps,
        )

    def score(self, windows: np.ndarray | Tensor) -> WindowScores:
        """Score float32 [B, W, F] normalised windows; B may be 0."""
        model = self.model
        expected = (model.window, model.n_features)
        if windows.ndim != 3 or tuple(windows.shape[1:]) != expected:
            raise ValueError(
                f"expected windows of shape [B, {expected[0]}, {expected[1]}], "
                f"got {list(windows.shape)}"
            )
        n, f = windows.shape[0], model.n_features
        if n == 0:
            return WindowScores(
                scores=np.empty(0, dtype=np.float32),
                feature_errors=np.empty((0, f), dtype=np.float32),
                last_reconstruction=np.empty((0, f), dtype=np.float32),
            )
        if isinstance(windows, np.ndarray):
            windows = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
        model.eval()
        with _torch_threads(self._threads), torch.inference_mode():
            out = torch.empty((n, 1 + 2 * f), dtype=torch.float32, device=self.device)
            for start in range(0, n, self.batch_size):
                stop = min(start + self.batch_size, n)
                x = windows[start:stop].to(self.device, non_blocking=self._non_blocking)
                out[start:stop] = self._forward(x)
            result = out.cpu().numpy()
        return WindowScores(
            scores=result[:, 0].copy(),
            feature_errors=result[:, 1 : 1 + f].copy(),
            last_reconstruction=result[:, 1 + f :].copy(),
        )


class _LadderForward:
    """CPU: every micro-batch runs padded to the next size of a short ladder (powers of two
    from 16 up to batch_size).

    Torch's CPU LSTM (oneDNN) keeps a primitive cached per input shape; fed the batch sizes a
    live stream produces, every new size adds one and the process grows without bound. A
    ladder bounds the shapes to about a dozen, at the cost of scoring up to twice the rows of
    a small micro-batch. Rows are independent, so the zero padding changes no real row.
    """

    _SMALLEST = 16

    def __init__(self, results: Callable[[Tensor], Tensor], batch_size: int) -> None:
        self._results = results
        sizes = []
        size = self._SMALLEST
        while size < batch_size:
            sizes.append(size)
            size *= 2
        self._sizes = np.array([*sizes, batch_size])

    def __call__(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        size = int(self._sizes[np.searchsorted(self._sizes, n)])
        if size == n:
            return self._results(x)
        padded = x.new_zeros((size, *x.shape[1:]))
        padded[:n] = x
        return self._results(padded)[:n]


class _FixedShapeForward:
    """CUDA only: every micro-batch runs padded to [batch_size, W, F], replaying a CUDA graph.

    One shape means cuDNN plans once and the whole forward pass can be captured as a CUDA graph,
    replayed per micro-batch for one launch instead of dozens of small kernels (torch.compile
    cannot trace the LSTM). Rows are independent, so the padding rows (whatever the previous
    micro-batch left there) do not change the real rows' results. The graph is captured at the
    first call and checked against the eager pass on the same input; if capture fails or the two
    disagree, the reason is logged and scoring runs eagerly on the padded input.
    """

    def __init__(
        self, results: Callable[[Tensor], Tensor], batch_size: int, use_graph: bool
    ) -> None:
        self._results = results
        self._batch_size = batch_size
        self._use_graph = use_graph
        self._input: Tensor | None = None
        self._graph: torch.cuda.CUDAGraph | None = None
        self._output: Tensor | None = None

    def __call__(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        if self._input is None:
            self._input = x.new_zeros((self._batch_size, *x.shape[1:]))
            if self._use_graph:
                self._capture()
        self._input[:n].copy_(x)
        if self._graph is None:
            return self._results(self._input)[:n]
        self._graph.replay()
        assert self._output is not None
        return self._output[:n]

    def _capture(self) -> None:
        assert self._input is not None
        try:
            torch.nn.init.normal_(self._input)
            eager = self._results(self._input)
            side = torch.cuda.Stream(self._input.device)
            side.wait_stream(torch.cuda.current_stream(self._input.device))
            with torch.cuda.stream(side):
                for _ in range(3):  # warm-up on a side stream, as capture requires
                    self._results(self._input)
            torch.cuda.current_stream(self._input.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                output = self._results(self._input)
            graph.replay()
            if not torch.allclose(output, eager, rtol=1e-4, atol=1e-5):
                raise RuntimeError("graph replay differs from the eager pass")
        except Exception as error:  # noqa: BLE001 - any failure means: score eagerly
            log.warning(
                "cuda graph not used; scoring eagerly on padded batches", reason=repr(error)
            )
            return
        self._graph, self._output = graph, output
        log.info("cuda graph captured for scoring", batch_size=self._batch_size)


@contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """Torch's thread count is process-wide, so it is changed only around scoring: training and
    anything else using torch in the process keep their own. 0 leaves it alone."""
    if count <= 0:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
