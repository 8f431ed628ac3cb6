"""A mechanism's extra frames (views, prior images) join the reference's U-Net pass — one call of batch 2 instead of
two calls of 1 — with the same loss and gradient as passes of their own; where a mechanism's forward belongs to the
reference's samples alone, they keep a pass of their own."""

from contextlib import contextmanager

import pytest
import torch
from PIL import Image

from ostaf.train import denoising_loss, mechanism_frames, prepare, sample_batch
from ostaf.training_setup import frame_mse
from ostaf.world.generator import Factors, render
from tests.conftest import tiny_config


@pytest.fixture
def star(tmp_path):
    path = tmp_path / "star.png"
    Image.fromarray(render(Factors("star", "red", "striped", "flat", 0.5, 0.5, 0.3)).image).save(path)
    return path


def shape_setup(path, out, **overrides):
    values = dict(attribute="shape", class_name="red striped object", views=2, view_loss_weight=2.5, grad_accum=1)
    return prepare(tiny_config(path, out, **(values | overrides)))


@contextmanager
def unet_batches(unet):
    """The batch size of every U-Net call made inside."""
    sizes: list[int] = []
    handle = unet.register_forward_pre_hook(lambda _, args: sizes.append(args[0].shape[0]))
    try:
        yield sizes
    finally:
        handle.remove()


def draw(setup, seed: int):
    generator = torch.Generator().manual_seed(seed)
    batch = sample_batch(setup, generator)
    return batch, mechanism_frames(setup, batch, generator)


def trainable_grads(setup, loss: torch.Tensor) -> list[torch.Tensor]:
    params = [p for p in setup.trainable if p.requires_grad]
    return [
        g if g is not None else torch.zeros_like(p)
        for p, g in zip(params, torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True), strict=True)
    ]


@pytest.mark.parametrize("model", ["tiny", "tiny-sdxl"])
def test_the_views_join_the_reference_pass_with_the_loss_and_gradient_of_their_own(star, tmp_path, model):
    """One U-Net call of batch 2 per micro-step; its two terms equal the reference's pass alone and the views' pass
    alone (× the weight), and so does the gradient of every trainable."""
    setup = shape_setup(star, tmp_path / "run", model=model, trainable="blocks")
    batch, frames = draw(setup, 0)
    assert len(frames) == 1 and frames[0].weight == 2.5
    with unet_batches(setup.unet) as sizes:
        joined = denoising_loss(setup, *batch, frames=frames)
    assert sizes == [2]
    with unet_batches(setup.unet) as sizes:
        alone = denoising_loss(setup, *batch)
        own = frame_mse(setup, frames[0])
    assert sizes == [1, 1]
    assert joined.mse.item() == pytest.approx(alone.mse.item(), rel=1e-5)
    assert joined.frames.item() == pytest.approx(2.5 * own.item(), rel=1e-5)
    assert abs(own.item() - alone.mse.item()) > 1e-3  # the two sets really differ: a swap would show
    together = trainable_grads(setup, joined.mse + joined.frames)
    apart = trainable_grads(setup, alone.mse + 2.5 * own)
    assert any(g.abs().sum() > 0 for g in together)
    # float sums in another order (one batch of 2 against two of 1) differ by ~4e-6 of the gradients' scale on an
    # AVX2-only CPU (1.6e-7 absolute: over a fixed 1e-7); a wrong weight or a swapped set moves them by percents
    atol = 1e-5 * max(float(g.abs().max()) for g in apart)
    for a, b in zip(together, apart, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=atol)


@pytest.mark.parametrize(
    "overrides",
    [
        {"attn_binding": 1.0},  # the probes record every sample of the pass
        {"dual_path": 0.5},  # the vanilla context is the training prompt's
        {"token_steps": 2},  # the token phase holds the adapter at λ = 0
        {"train_lam": "uniform"},  # per-sample λ for the reference's samples only
    ],
    ids=["binding", "dual-path", "token-phase", "per-sample-lambda"],
)
def test_the_views_keep_a_pass_of_their_own_where_the_forward_is_the_reference_s(star, tmp_path, overrides):
    """With a mechanism whose forward acts on the whole pass, the views run after it in their own pass, as
    before the fold: the same terms as computed apart."""
    setup = shape_setup(star, tmp_path / "run", **overrides)
    batch, frames = draw(setup, 1)
    with unet_batches(setup.unet) as sizes:
        joined = denoising_loss(setup, *batch, frames=frames)
    assert sizes == [1, 1]
    own = frame_mse(setup, frames[0])
    assert joined.frames.item() == pytest.approx(2.5 * own.item(), rel=1e-5)
