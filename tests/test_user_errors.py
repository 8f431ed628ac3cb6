"""Errors a user meets are found before the work, and λ is what the user asked for (issue 16, points 7-8)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ostaf.cli import main
from ostaf.config import GenerateConfig
from ostaf.errors import OstafError
from ostaf.train import train
from tests.conftest import tiny_config


def test_an_out_that_is_a_file_is_refused_before_training(reference, tmp_path, monkeypatch):
    import ostaf.train as training

    monkeypatch.setattr(training, "prepare", lambda *a, **k: pytest.fail("training started"))
    blocker = tmp_path / "out.txt"
    blocker.write_text("keep me")
    with pytest.raises(OstafError, match="is an existing file"):
        train(tiny_config(reference, blocker))
    assert blocker.read_text() == "keep me"


def test_a_resolution_that_is_not_a_multiple_of_8_is_one_line(capsys):
    assert main(["generate", "--ckpt", "c", "--prompt", "a *a", "--resolution", "12"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "ostaf generate: error: resolution 12 is not a multiple of 8 (the latent grid needs it): use e.g. 16"


def test_a_folder_that_is_not_a_preprocess_output_says_so(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    argv = ["train", "--image", str(tmp_path / "photos"), "--class-name", "dog", "--out", str(tmp_path / "o")]
    assert main([*argv, "--device", "cpu", "--steps", "1"]) == 2
    assert "not an `ostaf preprocess` output" in capsys.readouterr().err


def test_a_bad_image_is_reported_before_missing_sam_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("OSTAF_SAM_WEIGHTS", raising=False)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    argv = ["train", "--image", str(tmp_path / "broken.png"), "--class-name", "dog", "--out", str(tmp_path / "o")]
    assert main([*argv, "--device", "cpu", "--steps", "1", "--segment"]) == 2  # SAM weights are missing too
    err = capsys.readouterr().err
    assert "broken.png" in err and "SAM" not in err


@pytest.mark.parametrize("model", ["/models/sd-v1-5.safetensors", "weights/model.ckpt", "./nowhere"])
def test_a_missing_weight_file_is_not_called_a_hub_id(model):
    from ostaf.models import load_pipeline

    with pytest.raises(OstafError, match=f"^{model} does not exist"):
        load_pipeline(model)


@pytest.mark.parametrize("lam", [1e38, -50.0])
def test_an_absurd_lambda_is_refused(lam):
    with pytest.raises(OstafError, match="far outside"):
        GenerateConfig(ckpt=["c"], prompt=["a *a"], lam=[lam])


def test_lam_per_ckpt_scales_each_checkpoint(reference, tmp_path):
    from ostaf import apply
    from ostaf.generate import generate, set_scheduler
    from ostaf.models import load_pipeline

    shape = train(tiny_config(reference, tmp_path / "shape", steps=2, attribute="shape"), progress=False).out
    look = train(tiny_config(reference, tmp_path / "look", steps=2), progress=False).out
    prompt = "a cat in the shape of *m in the appearance of *a"
    common = dict(ckpt=[str(shape), str(look)], prompt=[prompt], lam=[1.0], seeds=[4], num_steps=2, device="cpu")
    config = GenerateConfig(**common, out=str(tmp_path / "g"), lam_per_ckpt=[0.0, 0.8])
    (result,) = generate(config, progress=False)
    pipe = load_pipeline("tiny", seed=42)
    set_scheduler(pipe, "ddim")
    apply(pipe, shape, lam=0.0)
    look_adapter = apply(pipe, look)
    with torch.no_grad(), look_adapter.merged_at(0.8):
        direct = pipe(prompt, generator=torch.Generator().manual_seed(4), num_inference_steps=2).images[0]
    assert np.array_equal(np.asarray(result.images[(1.0, 4)]), np.asarray(direct))
    with pytest.raises(OstafError, match="one per --ckpt"):
        GenerateConfig(**common, out=str(tmp_path / "h"), lam_per_ckpt=[1.0])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"--attribute": "colour"}, "unknown attribute"),
        ({"--prompts": "a vase in the appearance of"}, "every prompt must contain *a"),
        ({"--image": "missing.png"}, "missing.png"),
    ],
)
def test_run_local_checks_the_reference_before_the_pipeline_starts(tmp_path, monkeypatch, capsys, change, message):
    import pipelines.run as run
    from tests.conftest import synthetic_image

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(run, "run_local", lambda *a, **k: pytest.fail("the pipeline started"))
    synthetic_image().save(tmp_path / "ref.png")
    flags = {"--image": "ref.png", "--attribute": "appearance", "--prompts": "a vase in the appearance of *a"} | change
    argv = ["run-local", "--pipeline", "personalization", "--model", "tiny", "--class-name", "toy"]
    assert run.main([*argv, *(x for pair in flags.items() for x in pair)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pipelines run-local: error:") and message in err and len(err.splitlines()) == 1


def test_a_reference_in_an_object_store_is_read_and_a_local_one_is_uploaded_on_submit(tmp_path, monkeypatch):
    """On a cluster the image must be somewhere the pods can read: `submit` uploads a local file (named by its
    content) and passes its s3:// URI; the import step reads s3:// (and minio://) URIs; a missing object is one
    error naming it."""
    import boto3
    from moto import mock_aws
    from PIL import Image

    import pipelines.run as run
    from ostaf.steps import import_reference
    from tests.conftest import synthetic_image

    for key, value in {
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    synthetic_image().save(tmp_path / "ref.png")
    sent = {}
    monkeypatch.setattr(run, "submit", lambda package, params, *a, **k: sent.update(params) or "run-1")
    with mock_aws():
        boto3.client("s3").create_bucket(Bucket="ostaf-benchmark")
        argv = ["submit", "--pipeline", "personalization", "--image", str(tmp_path / "ref.png"), "--host", "h"]
        argv += ["--attribute", "appearance", "--class-name", "toy", "--prompts", "a vase in the appearance of *a"]
        argv += ["--package", str(tmp_path)]
        assert run.main(argv) == 0
        uri = sent["image"]
        assert uri.startswith("s3://ostaf-benchmark/references/") and uri.endswith(".png")
        for scheme in ("s3://", "minio://"):
            dest = tmp_path / f"imported-{scheme[:-3]}"
            import_reference(
                uri.replace("s3://", scheme), "appearance", "toy", ["a vase in the appearance of *a"], dest
            )
            same = np.asarray(Image.open(dest / "reference.png"))
            assert np.array_equal(same, np.asarray(Image.open(tmp_path / "ref.png").convert("RGB")))
        with pytest.raises(OstafError, match="cannot read s3://ostaf-benchmark/nothing.png"):
            import_reference("s3://ostaf-benchmark/nothing.png", "appearance", "toy", ["a *a"], tmp_path / "none")
