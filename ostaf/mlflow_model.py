"""An OSTAF checkpoint as an MLflow pyfunc model: prompts and λ in, images out."""

from __future__ import annotations

import mlflow.models
import mlflow.pyfunc
import numpy as np


class OstafModel(mlflow.pyfunc.PythonModel):
    """`predict` takes a DataFrame with a `prompt` column and optional `lam`, `seed`, `num_steps`,
    `guidance`; it returns uint8 images, shape (N, H, W, 3). The base model is the one named in
    the checkpoint (a preset or a local path), never copied into the MLflow artifact."""

    def load_context(self, context) -> None:
        from ostaf.checkpoint import apply, load_base_pipeline, load_checkpoint

        checkpoint = load_checkpoint(context.artifacts["checkpoint"])
        self.pipe = load_base_pipeline(checkpoint)
        self.adapter = apply(self.pipe, checkpoint)

    def predict(self, context, model_input, params=None) -> np.ndarray:
        import torch

        images = []
        for row in model_input.to_dict("records"):
            with self.adapter.merged_at(float(row.get("lam", 1.0))):  # λ folded in: the base model's cost
                out = self.pipe(
                    row["prompt"],
                    generator=torch.Generator().manual_seed(int(row.get("seed", 0))),
                    num_inference_steps=int(row.get("num_steps", 50)),
                    guidance_scale=float(row.get("guidance", 7.5)),
                    output_type="pil",
                ).images[0]
            images.append(np.asarray(out))
        return np.stack(images)


# Models-from-code: MLflow stores this file with the model and runs it at load time, so loading
# needs no pickle (see `ostaf.tracking.RunLogger.log_model`).
mlflow.models.set_model(OstafModel())
