"""The autoencoder's shapes and the scorer's arithmetic, batching and usefulness."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_detector.engine.model import (
    LSTMAutoencoder,
    WindowScorer,
    _FixedShapeForward,
    _window_results,
    ring_device,
    select_device,
)

CPU = torch.device("cpu")


def _model(n_features: int = 2, window: int = 8, seed: int = 0) -> LSTMAutoencoder:
    torch.manual_seed(seed)
    return LSTMAutoencoder(n_features, window, hidden_size=8, num_layers=1, latent_size=4)


def test_forward_keeps_the_window_shape() -> None:
    model = _model(n_features=3, window=8)
    out = model(torch.randn(5, 8, 3))
    assert out.shape == (5, 8, 3)


def test_forward_refuses_a_window_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match=r"\[B, 8, 2\]"):
        _model()(torch.randn(5, 7, 2))


def test_two_layer_model_runs() -> None:
    torch.manual_seed(0)
    model = LSTMAutoencoder(2, 6, hidden_size=8, num_layers=2, latent_size=3)
    assert model(torch.randn(4, 6, 2)).shape == (4, 6, 2)


def test_scores_are_the_mean_squared_reconstruction_error() -> None:
    model = _model()
    windows = np.random.default_rng(1).normal(size=(7, 8, 2)).astype(np.float32)
    result = WindowScorer(model, CPU, batch_size=64).score(windows)

    with torch.no_grad():
        reconstruction = model(torch.from_numpy(windows)).numpy()
    squared = (reconstruction.astype(np.float64) - windows) ** 2
    np.testing.assert_allclose(result.scores, squared.mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(result.feature_errors, squared.mean(axis=1), rtol=1e-5)
    np.testing.assert_allclose(result.last_reconstruction, reconstruction[:, -1, :], rtol=1e-6)
    assert result.scores.dtype == np.float32
    assert result.feature_errors.dtype == np.float32
    assert result.last_reconstruction.dtype == np.float32


def test_score_steps_score_the_newest_steps_only_with_the_rest_as_context() -> None:
    """With score_steps = 2 an old step, however far off, moves the score only through what the
    model makes of the newest two; their error alone is averaged."""
    model = _model()
    windows = np.random.default_rng(2).normal(size=(5, 8, 2)).astype(np.float32)
    windows[:, 1, :] = 40.0  # an old step far off
    result = WindowScorer(model, CPU, batch_size=64, score_steps=2).score(windows)

    with torch.no_grad():
        reconstruction = model(torch.from_numpy(windows)).numpy()
    newest = ((reconstruction.astype(np.float64) - windows) ** 2)[:, -2:, :]
    np.testing.assert_allclose(result.scores, newest.mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(result.feature_errors, newest.mean(axis=1), rtol=1e-5)
    whole = WindowScorer(model, CPU, batch_size=64).score(windows)
    assert (whole.scores > 10 * result.scores).all()  # the old step dominates the whole window


@pytest.mark.parametrize("score_steps", [-1, 9])
def test_score_steps_beyond_the_window_are_refused(score_steps: int) -> None:
    with pytest.raises(ValueError, match=r"score_steps must be in 0\.\.8"):
        WindowScorer(_model(), CPU, batch_size=4, score_steps=score_steps)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 40), batch_size=st.integers(1, 50))
def test_micro_batching_does_not_change_scores(n: int, batch_size: int) -> None:
    model = _model()
    windows = np.random.default_rng(n).normal(size=(n, 8, 2)).astype(np.float32)
    whole = WindowScorer(model, CPU, batch_size=1024).score(windows)
    split = WindowScorer(model, CPU, batch_size=batch_size).score(windows)
    np.testing.assert_allclose(split.scores, whole.scores, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(split.feature_errors, whole.feature_errors, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        split.last_reconstruction, whole.last_reconstruction, rtol=1e-5, atol=1e-7
    )


def test_cpu_scorer_runs_the_model_at_a_few_fixed_shapes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Torch's CPU LSTM caches state per input shape, so a live stream's ever-new batch sizes
    would grow memory without bound: the scorer pads micro-batches to a short ladder."""
    import stream_detector.engine.model as model_module

    shapes: set[int] = set()
    real = model_module._window_results

    def spy(model: LSTMAutoencoder, x: torch.Tensor, score_steps: int) -> torch.Tensor:
        shapes.add(int(x.shape[0]))
        return real(model, x, score_steps)

    monkeypatch.setattr(model_module, "_window_results", spy)
    model = _model()
    scorer = WindowScorer(model, CPU, batch_size=300)
    rng = np.random.default_rng(0)
    for n in range(1, 700, 7):
        windows = rng.normal(size=(n, 8, 2)).astype(np.float32)
        result = scorer.score(windows)
        assert result.scores.shape == (n,)
        if n in (1, 99):  # padding rows never change the real rows
            np.testing.assert_allclose(
                result.scores,
                real(model, torch.from_numpy(windows), 0)[:, 0].detach().numpy(),
                rtol=1e-5,
            )
    assert shapes == {16, 32, 64, 128, 256, 300}


def test_empty_batch_gives_empty_results() -> None:
    result = WindowScorer(_model(), CPU, batch_size=4).score(np.empty((0, 8, 2), np.float32))
    assert result.scores.shape == (0,)
    assert result.feature_errors.shape == (0, 2)
    assert result.last_reconstruction.shape == (0, 2)
    assert len(result) == 0


def test_scorer_refuses_windows_of_the_wrong_shape() -> None:
    scorer = WindowScorer(_model(), CPU, batch_size=4)
    with pytest.raises(ValueError, match="shape"):
        scorer.score(np.zeros((3, 8, 3), np.float32))


def test_scorer_leaves_gradients_off_and_model_in_eval_mode() -> None:
    model = _model()
    model.train()
    scorer = WindowScorer(model, CPU, batch_size=4)
    scorer.score(np.zeros((3, 8, 2), np.float32))
    assert not model.training
    assert all(p.grad is None for p in model.parameters())


def _sine_windows(n: int, window: int, rng: np.random.Generator) -> np.ndarray:
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1))
    steps = np.arange(window)[None, :]
    wave = np.sin(phase + steps * 2 * np.pi / window)
    return wave[:, :, None].astype(np.float32)


def test_trained_autoencoder_scores_a_spike_above_normal_windows() -> None:
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    model = LSTMAutoencoder(1, 8, hidden_size=16, num_layers=1, latent_size=4)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    train = torch.from_numpy(_sine_windows(256, 8, rng))
    for _ in range(150):
        optimiser.zero_grad()
        loss = torch.nn.functional.mse_loss(model(train), train)
        loss.backward()
        optimiser.step()

    normal = _sine_windows(64, 8, rng)
    spiked = normal[:8].copy()
    spiked[:, 4, 0] += 4.0
    scorer = WindowScorer(model, CPU, batch_size=16)
    normal_scores = scorer.score(normal).scores
    spike_scores = scorer.score(spiked).scores
    assert spike_scores.min() > normal_scores.max()
    assert np.all(spike_scores > 5 * np.median(normal_scores))


def test_select_device_cpu_and_auto_without_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("cpu") == CPU
    assert select_device("auto") == CPU


def test_select_device_refuses_cuda_when_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="model.device"):
        select_device("cuda")


def test_select_device_refuses_unknown_names() -> None:
    with pytest.raises(ValueError, match="'auto', 'cpu' or 'cuda'"):
        select_device("tpu")


def test_ring_device_auto_means_gpu_only() -> None:
    cuda = torch.device("cuda")
    assert ring_device("auto", CPU) is None
    assert ring_device("auto", cuda) == cuda
    assert ring_device("on", CPU) == CPU  # the torch ring on the CPU: how tests cover it
    assert ring_device("off", cuda) is None
    with pytest.raises(ValueError, match="device_resident"):
        ring_device("gpu", CPU)


def test_scores_of_a_tensor_equal_those_of_the_same_numpy_windows() -> None:
    torch.manual_seed(0)
    scorer = WindowScorer(LSTMAutoencoder(3, 5, 8, 1, 4), CPU, 7)
    windows = np.random.default_rng(0).normal(size=(20, 5, 3)).astype(np.float32)
    from_numpy = scorer.score(windows)
    from_tensor = scorer.score(torch.from_numpy(windows))
    for name in ("scores", "feature_errors", "last_reconstruction"):
        np.testing.assert_array_equal(getattr(from_tensor, name), getattr(from_numpy, name))


def test_fixed_shape_forward_pads_without_changing_the_real_rows() -> None:
    """The CUDA scorer's padding (run eagerly here, on the CPU): a short micro-batch after a full
    one, so the padding rows hold the previous batch's windows, scores like the unpadded batch."""
    torch.manual_seed(0)
    model = LSTMAutoencoder(2, 6, 8, 1, 4).eval()
    rng = np.random.default_rng(3)
    full = torch.from_numpy(rng.normal(size=(16, 6, 2)).astype(np.float32))
    short = torch.from_numpy(rng.normal(size=(5, 6, 2)).astype(np.float32))
    padded = _FixedShapeForward(functools.partial(_window_results, model, score_steps=0), 16, False)
    with torch.inference_mode():
        got_full, got_short = padded(full).clone(), padded(short).clone()
        want_full, want_short = _window_results(model, full, 0), _window_results(model, short, 0)
    assert got_short.shape == (5, 1 + 2 * 2)
    torch.testing.assert_close(got_full, want_full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_short, want_short, rtol=1e-5, atol=1e-6)
