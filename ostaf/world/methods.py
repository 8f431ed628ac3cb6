"""The world experiment's methods: each a `Recipe` (training options, generation options, what it is).

A method is exactly what `ostaf train` and `ostaf generate` run with its options, so a row of the table can be
reproduced from the CLI. `trainable`'s `part` defaults to the paper's part of each attribute (encoder for shape,
decoder for appearance and style); the v1 methods fix it to test which part carries which attribute.
"""

from __future__ import annotations

from typing import Any

from ostaf.config import ADAPTER_OF
from ostaf.recipes import APPEARANCE_VIEWS, DISENTANGLED, STYLE_VIEWS, VIEWS, Recipe, layered
from ostaf.world.references import Reference, varied_class_prompts


def _method(name: str, description: str, generate: dict[str, Any] | None = None, **train: Any) -> Recipe:
    return Recipe(name, description, train=train, generate=generate or {})


_ZERO = "ΔW = 0 at step 0 (`--zero-init`) instead of the authors' random init (|ΔW| ≈ 0.2 here)"
_SEARCH = "the word search (`--token-search`): e* starts at the vocabulary word that best denoises the reference"
_BAND = "the noisy three quarters of the schedule only (`--timestep-range 0.25 1`)"
_SNR = "min-SNR-γ loss weighting (`--snr-gamma 1`)"
_PRIOR = "prior preservation: 8 class images of the base model in every step's loss (`--prior-images 8`)"
_PIVOTAL = "pivotal tuning: the token first in the band (the weights at λ = 0), then the weights with the token frozen"
_VARIED = "prior images of the class with other values of the attributes not learned (`varied_class_prompts`)"
_VIEWS = (
    "captioned views (`--views 4`): the silhouette in four named colours (shape), the surface cut to four named "
    "primitives (appearance), each view's prompt naming its word"
)
_TEXTURED = dict(trainable="blocks", views=8, view_textures=True)  # the `views` recipe before it took the band
_BAND_VIEWS = _TEXTURED | dict(timestep_range=[0.25, 1.0])  # the `views` recipe on the band, 200 steps (its rows)
SAMPLER_OPTIONS = ("num_steps", "guidance")  # a recipe's own sampler settings (else the experiment's)
# the `views` recipe's generation without its own guidance: the rows its variants measured at the experiment's (5)
_VIEWS_KNOB = {k: v for k, v in VIEWS.generate.items() if k not in SAMPLER_OPTIONS}
_EXTENDED_BAND = {k: v for k, v in APPEARANCE_VIEWS.train.items() if k != "steps"}  # its rows at the world's 200
_STYLE_VIEWS = (
    "10 style views (`--views 10` on a style): each a named outline in a named colour and texture with what the "
    "reference draws along its object's edge and around it (rim, cast shadow; its frame kept), 'a red plain circle "
    "in the style of *s'"
)
_STYLE_TRAIN = dict(trainable="blocks", views=10, timestep_range=[0.25, 1.0], steps=400)
# pivotal tuning on the style views: the `style-views` recipe's token phase, then the decoder's blocks with the token
# frozen (`--token-steps`), each at its own rate
_TOKEN_FIRST = dict(token_steps=STYLE_VIEWS.train["steps"], token_lr=STYLE_VIEWS.train["lr"])  # its token phase
_STYLE_PIVOTAL = STYLE_VIEWS.train | _TOKEN_FIRST | dict(trainable="blocks", steps=600, lr=3e-4)
_EDGE = "the band along its object's edge (`--masked-loss --mask-region edge`: rim, cast shadow, frame)"
_EDGE_LOSS = dict(masked_loss=True, mask_region="edge", mask_dilation=0)
_HYPER = "the hypernetwork's square matrices as rank-R factors (`--hyper-rank`; issue 17: does quality change?)"
_REFERENCE = dict(reference_attention=2.0)
_VECTORS = "a placeholder of two vectors (`--num-vectors 2`), for the values CLIP spells with two tokens (hex·agon)"

METHODS: dict[str, Recipe] = {
    r.name: r
    for r in (
        _method("token", "textual inversion: the placeholder token alone", trainable="token"),
        # the v1 table: each part fixed, to test which part carries which attribute
        _method(
            "finetune-encoder", "the encoder's blocks fine-tuned, with the token", trainable="blocks", part="encoder"
        ),
        _method(
            "finetune-decoder", "the decoder's blocks fine-tuned, with the token", trainable="blocks", part="decoder"
        ),
        _method("finetune-unet", "every U-Net weight fine-tuned, with the token", trainable="unet"),
        _method("ostaf-encoder-lite", "OSTAF lite on the encoder", trainable="lite", part="encoder"),
        _method("ostaf-decoder-lite", "OSTAF lite on the decoder", trainable="lite", part="decoder"),
        _method("ostaf-encoder-paper", "OSTAF paper on the encoder", trainable="paper", part="encoder"),
        _method("ostaf-decoder-paper", "OSTAF paper on the decoder", trainable="paper", part="decoder"),
        _method("ostaf-encoder-lite-zero", _ZERO, trainable="lite", part="encoder", zero_init=True),
        _method("ostaf-decoder-lite-zero", _ZERO, trainable="lite", part="decoder", zero_init=True),
        # on the paper's part of each attribute
        _method("finetune", "the blocks of the attribute's part fine-tuned, with the token", trainable="blocks"),
        _method("lora", "peft LoRA (rank 4) on the q/k/v the offsets would modulate", trainable="lora"),
        _method("lora-r16", "peft LoRA, rank 16", trainable="lora", lora_rank=16),
        _method("ostaf-paper", "OSTAF with the authors' hypernetworks", trainable="paper"),
        _method(
            "reference-attention",
            "the training-free DreamTuner path alone: the token, and the reference's features at generation",
            generate=_REFERENCE,
            trainable="token",
        ),
        # OSTAF lite alone and with each mechanism
        _method("ostaf-lite", "OSTAF lite", trainable="lite"),
        _method("ostaf-lite-zero", f"OSTAF lite, {_ZERO}: λ = 0 and 1 start equal", trainable="lite", zero_init=True),
        _method(
            "lite-zero+uniform-lambda",
            "OSTAF lite from ΔW = 0, λ drawn per sample in training (`--train-lam uniform`)",
            trainable="lite",
            zero_init=True,
            train_lam="uniform",
        ),
        _method("lite+binding", "OSTAF lite with the attention binding loss", trainable="lite", attn_binding=1.0),
        _method(
            "lite+contrastive",
            "OSTAF lite with the nearest-word contrastive term",
            trainable="lite",
            nn_contrastive=0.1,
        ),
        _method(
            "lite+dual-path",
            "OSTAF lite with DisenDiff's dual path in training and generation (β = 0.5)",
            generate=dict(dual_path=0.5),
            trainable="lite",
            dual_path=0.5,
        ),
        _method(
            "lite+uniform-lambda", "OSTAF lite, λ drawn per sample in training", trainable="lite", train_lam="uniform"
        ),
        _method("lite+token-steps", "OSTAF lite, the token alone first", trainable="lite", token_steps=100),
        _method("lite+masked-loss", "OSTAF lite, the loss inside the mask", trainable="lite", masked_loss=True),
        _method(
            "lite+reference-attention",
            "OSTAF lite, and the reference's features at generation",
            generate=_REFERENCE,
            trainable="lite",
        ),
        _method("token+search", _SEARCH, trainable="token", token_search=32),
        _method("lite+search", _SEARCH, trainable="lite", token_search=32),
        _method("lite-zero+search", _SEARCH, trainable="lite", zero_init=True, token_search=32),
        _method("token-long", "longer textual inversion", trainable="token", steps=400, lr=3e-3),
        _method("token-800", "longer textual inversion", trainable="token", steps=800, lr=1e-3),
        _method(
            "lite-zero+token-first",
            "OSTAF lite trained after textual inversion (the token first, then zero-init offsets at every λ)",
            trainable="lite",
            zero_init=True,
            train_lam="uniform",
            token_steps=400,
            steps=500,
            lr=3e-3,
        ),
        _method(
            "reference-attention-lambda",
            "the DreamTuner path on the checkpoint's own part (encoder for shape), its weight ω·λ: λ dials the "
            "reference",
            generate=dict(reference_attention=2.0, reference_blocks="auto", reference_lambda=True),
            trainable="token",
        ),
        # where in the noise schedule the loss looks (ostaf/mechanisms/timesteps.py)
        _method("token+snr", _SNR, trainable="token", snr_gamma=1.0),
        _method("token+band", _BAND, trainable="token", timestep_range=[0.25, 1.0]),
        _method("disentangled", "the shipped recipe (token+band as the recipe writes it)", **DISENTANGLED.train),
        _method(
            "disentangled+lambda",
            "the shipped recipe, λ blending e* from its nearest word at generation",
            generate=dict(token_lambda=True),
            **DISENTANGLED.train,
        ),
        *(
            _method(
                f"disentangled-lr{lr}",
                f"the shipped recipe with the token at lr {lr} (the world's 1e-3 leaves a style's token half way to "
                "its word: it draws the style under the reference's own caption and not under other prompts)",
                generate=dict(token_lambda=True),
                **(DISENTANGLED.train | dict(lr=float(lr))),
            )
            for lr in ("3e-3", "1e-2", "3e-2")
        ),
        _method(
            "disentangled+strength",
            "the shipped recipe, λ blending e* from the attribute's own word at generation (λ = 0: no value named)",
            generate=dict(token_lambda=True, token_lambda_origin="attribute"),
            **DISENTANGLED.train,
        ),
        _method(
            "disentangled+prediction-strength",
            "the shipped recipe, λ weighing the noise predictions of the attribute's own word (λ = 0: no value "
            "named) and of e* at generation (`--token-lambda-blend prediction`)",
            generate=dict(token_lambda=True, token_lambda_origin="attribute", token_lambda_blend="prediction"),
            **DISENTANGLED.train,
        ),
        _method(
            "disentangled+prediction-lambda",
            "the shipped recipe, λ weighing the noise predictions of e*'s nearest word and of e* at generation",
            generate=dict(token_lambda=True, token_lambda_blend="prediction"),
            **DISENTANGLED.train,
        ),
        _method("token+vectors2", _VECTORS, trainable="token", num_vectors=2),
        _method("disentangled+vectors2", _VECTORS, **DISENTANGLED.train, num_vectors=2),
        _method(
            "disentangled+search",
            f"the shipped recipe, {_SEARCH} (scored in its band)",
            **DISENTANGLED.train,
            token_search=32,
        ),
        _method("token+band-half", "the noisy half of the schedule", trainable="token", timestep_range=[0.5, 1.0]),
        _method("token+band+snr", f"{_BAND}; {_SNR}", trainable="token", timestep_range=[0.25, 1.0], snr_gamma=1.0),
        _method("token+band-long", f"{_BAND}, 400 steps", trainable="token", timestep_range=[0.25, 1.0], steps=400),
        _method("lite+snr", _SNR, trainable="lite", snr_gamma=1.0),
        _method("lite+band", _BAND, trainable="lite", timestep_range=[0.25, 1.0]),
        _method("lite+prior", _PRIOR, trainable="lite", prior_images=8),
        _method("lora+prior", _PRIOR, trainable="lora", prior_images=8),
        _method("finetune+prior", _PRIOR, trainable="blocks", prior_images=8),
        _method("lite+pivotal", _PIVOTAL, trainable="lite", token_steps=100, timestep_range=[0.25, 1.0]),
        _method("lora+pivotal", _PIVOTAL, trainable="lora", token_steps=100, timestep_range=[0.25, 1.0]),
        _method("finetune+pivotal", _PIVOTAL, trainable="blocks", token_steps=100, timestep_range=[0.25, 1.0]),
        _method(
            "finetune+pivotal+prior",
            f"{_PIVOTAL}; {_PRIOR}",
            trainable="blocks",
            token_steps=100,
            timestep_range=[0.25, 1.0],
            prior_images=8,
        ),
        _method("lite+varied-prior", _VARIED, trainable="lite", prior_images=8),
        _method("lora+varied-prior", _VARIED, trainable="lora", prior_images=8),
        _method("finetune+varied-prior", _VARIED, trainable="blocks", prior_images=8),
        _method("finetune+varied-prior-0.3", _VARIED, trainable="blocks", prior_images=8, prior_loss_weight=0.3),
        _method("lora+varied-prior-0.3", _VARIED, trainable="lora", prior_images=8, prior_loss_weight=0.3),
        _method("token+views", _VIEWS, trainable="token", views=4),
        _method("disentangled+views", _VIEWS, **DISENTANGLED.train, views=4),
        _method("lite+views", _VIEWS, trainable="lite", views=4),
        _method("lora+views", _VIEWS, trainable="lora", views=4),
        _method("finetune+views", _VIEWS, trainable="blocks", views=4),
        _method("finetune+views8", "every palette colour (shape; appearance has 4)", trainable="blocks", views=8),
        _method(
            "finetune+views-w3",
            "the views' loss at weight 3: the views outweigh the image",
            trainable="blocks",
            views=4,
            view_loss_weight=3.0,
        ),
        _method(
            "finetune+textured-views8",
            "the `views` recipe's training before the band, its λ off: the silhouette in 8 named colours, each in a "
            "named texture",
            **_TEXTURED,
        ),
        _method(
            "views+lambda",
            "the `views` recipe before the band: λ blends its fine-tuned weights from the base's and its placeholder "
            "from the nearest word at generation (`--token-lambda`)",
            generate=_VIEWS_KNOB,
            **_TEXTURED,
        ),
        _method(
            "views+band+lambda",
            f"the `views` recipe on the band, 200 steps (as shipped before 400): textured views trained on {_BAND}, "
            "λ a strength",
            generate=_VIEWS_KNOB,
            **_BAND_VIEWS,
        ),
        _method(
            "views+band400+lambda",
            "the `views` recipe's training as shipped (textured views on the band, 400 steps: twice the world's), "
            "generated at the experiment's guidance (the world's 5: the recipe's until it took 2.5)",
            generate=_VIEWS_KNOB,
            **VIEWS.train,
        ),
        _method(
            "views+band400+g2.5",
            "the `views` recipe as shipped: its training, generated at its own guidance (2.5)",
            generate=VIEWS.generate,
            **VIEWS.train,
        ),
        _method(
            "views+band400+edge-loss",
            f"the `views` recipe as shipped, the reference learned only on {_EDGE}: its loss a mean over the cells "
            "along the silhouette's edge, where the lobes and notches are, the views' over the whole picture",
            generate=_VIEWS_KNOB,
            **(VIEWS.train | _EDGE_LOSS),
        ),
        _method(
            "views+band600+lambda",
            "the `views` recipe at 600 steps (half again the shipped 400: the lever that took 200 → 400 from 58 % "
            "to 68 % of the gap on validation)",
            generate=_VIEWS_KNOB,
            **(_BAND_VIEWS | dict(steps=600)),
        ),
        _method(
            "views+band400-b2+lambda",
            "the `views` recipe, 400 steps of 2 samples in one batch (`--batch-size 2 --grad-accum 1`: "
            "the samples of 400 steps at the default accumulation of 2, in half the U-Net passes)",
            generate=_VIEWS_KNOB,
            **(_BAND_VIEWS | dict(steps=400, batch_size=2, grad_accum=1)),
        ),
        _method(
            "views+band-lr2e-3+lambda",
            "the `views` recipe on the band at 200 steps and twice the world's rate (lr 2e-3)",
            generate=_VIEWS_KNOB,
            **(_BAND_VIEWS | dict(lr=2e-3)),
        ),
        _method(
            "views+band0.1+lambda",
            "the `views` recipe at 200 steps, the band widened to the noisy nine tenths (`--timestep-range 0.1 1`)",
            generate=_VIEWS_KNOB,
            **(_BAND_VIEWS | dict(timestep_range=[0.1, 1.0])),
        ),
        _method(
            "views+zoom+band+lambda",
            "the `views` recipe at 200 steps, every other view's silhouette enlarged to fill the frame (`--view-zoom`)",
            generate=_VIEWS_KNOB,
            **(_BAND_VIEWS | dict(view_zoom=True)),
        ),
        _method(
            "views16+band+lambda",
            "the `views` recipe at 200 steps with 16 views (every palette colour twice, the textures in turn)",
            generate=_VIEWS_KNOB,
            **(_BAND_VIEWS | dict(views=16)),
        ),
        _method(
            "appearance-extended-views+band+lambda",
            "appearance views extended over whole primitives by the surface's own period (`--view-extend`): "
            f"blocks fine-tuned with them on {_BAND}, λ a strength",
            generate=APPEARANCE_VIEWS.generate,
            **(_EXTENDED_BAND | dict(views=4)),
        ),
        _method(
            "appearance-extended-views+band400+lambda",
            "the extended appearance views for 400 steps (as the shape's views ship)",
            generate=APPEARANCE_VIEWS.generate,
            **(_EXTENDED_BAND | dict(views=4, steps=400)),
        ),
        _method(
            "appearance-extended-views10+band+lambda",
            "the extended appearance views on all ten named outlines (`--views 10`), 200 steps",
            generate=APPEARANCE_VIEWS.generate,
            **_EXTENDED_BAND,
        ),
        _method(
            "appearance-extended-views10+band400+lambda",
            "the extended appearance views on all ten named outlines, 400 steps: the `appearance-views` recipe",
            generate=APPEARANCE_VIEWS.generate,
            **APPEARANCE_VIEWS.train,
        ),
        _method(
            "appearance-views+confined",
            "the `appearance-views` recipe with the token learning only through the decoder's blocks "
            "(`--token-grad confined`: the backward pass stops at the up blocks, a quarter of the step's time)",
            generate=APPEARANCE_VIEWS.generate,
            **(APPEARANCE_VIEWS.train | dict(token_grad="confined")),
        ),
        _method(
            "style-views+band400+lambda",
            f"{_STYLE_VIEWS}: the decoder's blocks fine-tuned with them on {_BAND}, 400 steps, λ a strength",
            generate=APPEARANCE_VIEWS.generate,
            **_STYLE_TRAIN,
        ),
        _method(
            "style-views400+lambda",
            f"{_STYLE_VIEWS}, on the whole schedule (a rim is a detail the last steps draw), 400 steps",
            generate=APPEARANCE_VIEWS.generate,
            **{k: v for k, v in _STYLE_TRAIN.items() if k != "timestep_range"},
        ),
        _method(
            "style-views+unet+band400+lambda",
            f"{_STYLE_VIEWS}: every U-Net weight fine-tuned with them (a cast shadow is where the object is: the "
            f"encoder's coarse blocks place it) on {_BAND}, 400 steps, λ a strength",
            generate=APPEARANCE_VIEWS.generate,
            **(_STYLE_TRAIN | dict(trainable="unet")),
        ),
        _method(
            "style-views+band+lambda",
            f"{_STYLE_VIEWS}, on {_BAND}, at the world's 200 steps",
            generate=APPEARANCE_VIEWS.generate,
            **(_STYLE_TRAIN | dict(steps=200)),
        ),
        _method(
            "style-views+band400-lr3e-4+lambda",
            f"{_STYLE_VIEWS}: the decoder's blocks fine-tuned with them on {_BAND}, 400 steps at a third of the "
            "world's rate (lr 3e-4: the weights move less from the base's, the prompt's words keep more of their say)",
            generate=APPEARANCE_VIEWS.generate,
            **(_STYLE_TRAIN | dict(lr=3e-4)),
        ),
        _method(
            "style-views+band400-lr1e-4+lambda",
            f"{_STYLE_VIEWS}: the decoder's blocks fine-tuned with them on {_BAND}, 400 steps at lr 1e-4",
            generate=APPEARANCE_VIEWS.generate,
            **(_STYLE_TRAIN | dict(lr=1e-4)),
        ),
        _method(
            "style-views+band400-lr3e-4+varied-prior",
            f"{_STYLE_VIEWS}: the decoder's blocks fine-tuned with them on {_BAND}, 400 steps at lr 3e-4; "
            f"{_VARIED} (8 images)",
            generate=APPEARANCE_VIEWS.generate,
            **(_STYLE_TRAIN | dict(lr=3e-4, prior_images=8)),
        ),
        _method(
            "token+style-views",
            f"{_STYLE_VIEWS}: the placeholder alone learns from them (no weights: the prompt's words keep their say) "
            f"on {_BAND}, 400 steps",
            **(_STYLE_TRAIN | dict(trainable="token")),
        ),
        _method(
            "token+style-views-lr3e-3",
            f"{_STYLE_VIEWS}: the placeholder alone learns from them on {_BAND}, 400 steps at lr 3e-3",
            generate=STYLE_VIEWS.generate,
            **(STYLE_VIEWS.train | dict(lr=3e-3)),
        ),
        _method(
            "token+style-views-lr1e-2",
            "the `style-views` recipe (its rows in the ablation): the placeholder alone learns from the style views "
            "at lr 1e-2 (at the world's 1e-3 the token stays half way to a style's word)",
            generate=STYLE_VIEWS.generate,
            **STYLE_VIEWS.train,
        ),
        _method(
            "token+style-views-lr1e-2+confined",
            f"{_STYLE_VIEWS}: the placeholder alone learns from them through the decoder's blocks only (`--token-grad "
            f"confined`: the backward pass stops there) on {_BAND}, 400 steps at lr 1e-2",
            generate=STYLE_VIEWS.generate,
            **(STYLE_VIEWS.train | dict(token_grad="confined")),
        ),
        _method(
            "token+style-views-lr1e-2+accum1",
            f"{_STYLE_VIEWS}: the placeholder alone learns from them on {_BAND}, 400 steps at lr 1e-2, one reference "
            "draw per step (`--grad-accum 1`: a U-Net batch of 2 with the view, not 3)",
            generate=STYLE_VIEWS.generate,
            **(STYLE_VIEWS.train | dict(grad_accum=1)),
        ),
        _method(
            "token+style-views200-lr1e-2",
            f"{_STYLE_VIEWS}: the placeholder alone learns from them on {_BAND}, 200 steps at lr 1e-2",
            generate=STYLE_VIEWS.generate,
            **(STYLE_VIEWS.train | dict(steps=200)),
        ),
        _method(
            "style-views+token-lr1e-2",
            f"{_STYLE_VIEWS}: the decoder's blocks at lr 3e-4 and the token at lr 1e-2 (`--token-lr`) learn from them "
            f"on {_BAND}, 400 steps: the token reaches the nearest style word, the weights what no word names",
            generate=APPEARANCE_VIEWS.generate,
            **(_STYLE_TRAIN | dict(lr=3e-4, token_lr=1e-2)),
        ),
        _method(
            "style-views+pivotal",
            f"{_STYLE_VIEWS}: pivotal — the `style-views` recipe's token first (400 steps at lr 1e-2 on the base "
            "model, the blocks frozen), then the decoder's blocks at lr 3e-4 for 200 steps with the token frozen "
            "(`--token-steps 400`): the weights learn only what the token's word leaves",
            generate=STYLE_VIEWS.generate,
            **_STYLE_PIVOTAL,
        ),
        _method(
            "style-views+pivotal-lr1e-4",
            f"{_STYLE_VIEWS}: as `style-views+pivotal` with the blocks at lr 1e-4",
            generate=STYLE_VIEWS.generate,
            **(_STYLE_PIVOTAL | dict(lr=1e-4)),
        ),
        _method(
            "style-views+pivotal100",
            f"{_STYLE_VIEWS}: as `style-views+pivotal` with 100 steps of the blocks (500 in all)",
            generate=STYLE_VIEWS.generate,
            **(_STYLE_PIVOTAL | dict(steps=500)),
        ),
        _method(
            "style-views+pivotal+varied-prior",
            f"{_STYLE_VIEWS}: as `style-views+pivotal`, the blocks' phase with {_VARIED} (8 images): the token "
            "draws the nearest word, the weights what it leaves, the prior keeps the prompt's words in charge",
            generate=STYLE_VIEWS.generate,
            **(_STYLE_PIVOTAL | dict(prior_images=8)),
        ),
        _method(
            "style-views+pivotal+varied-prior-0.3",
            f"{_STYLE_VIEWS}: as `style-views+pivotal+varied-prior` with the prior's loss at 0.3",
            generate=STYLE_VIEWS.generate,
            **(_STYLE_PIVOTAL | dict(prior_images=8, prior_loss_weight=0.3)),
        ),
        _method(
            "style-views+pivotal+views4",
            f"{_STYLE_VIEWS}: as `style-views+pivotal` with the views' loss at 4 × the reference's "
            "(`--view-loss-weight 4`): the rim and shadow learned along named outlines in named looks, less of the "
            "reference's own outline and colours",
            generate=STYLE_VIEWS.generate,
            **(_STYLE_PIVOTAL | dict(view_loss_weight=4.0)),
        ),
        _method(
            "style-views+pivotal+edge-loss",
            f"{_STYLE_VIEWS}: as `style-views+pivotal`, the blocks' phase learning the reference only on {_EDGE}: the "
            "weights are not asked to draw the reference's inside, nor its background",
            generate=STYLE_VIEWS.generate,
            **(_STYLE_PIVOTAL | _EDGE_LOSS | dict(masked_loss_start=_TOKEN_FIRST["token_steps"])),
        ),
        _method(
            "style-views+edge-loss",
            f"{_STYLE_VIEWS}: as `style-views`, the token learning the reference only on {_EDGE}: its look is "
            "the prompt's words', not the token's",
            generate=STYLE_VIEWS.generate,
            **(STYLE_VIEWS.train | _EDGE_LOSS),
        ),
        _method(
            "appearance-views+pivotal",
            "the `appearance-views` recipe's views and blocks, pivotal as `style-views+pivotal`: the token first with "
            "the views (400 steps at lr 1e-2, the blocks frozen), then the decoder's blocks at the recipe's lr 1e-3 "
            "for 200 steps with the token frozen (`--token-steps 400`)",
            generate=APPEARANCE_VIEWS.generate,
            **(APPEARANCE_VIEWS.train | _TOKEN_FIRST | dict(steps=600, lr=1e-3)),
        ),
        _method(
            "lite+style-views",
            f"{_STYLE_VIEWS}: OSTAF lite's decoder offsets and the token learn from them on {_BAND}, 400 steps",
            **(_STYLE_TRAIN | dict(trainable="lite")),
        ),
        _method(
            "lora+style-views",
            f"{_STYLE_VIEWS}: LoRA on the decoder's q/k/v and the token learn from them on {_BAND}, 400 steps",
            **(_STYLE_TRAIN | dict(trainable="lora")),
        ),
        _method(
            "appearance-views+band+lambda",
            f"the `views` recipe's idea on an appearance: blocks fine-tuned with {_VIEWS[0].lower()}{_VIEWS[1:]}, "
            f"on {_BAND}, λ a strength",
            generate=_VIEWS_KNOB,
            trainable="blocks",
            views=4,
            timestep_range=[0.25, 1.0],
        ),
        _method(
            "views400+lambda",
            "the `views` recipe before the band, 400 steps (twice the world's)",
            generate=_VIEWS_KNOB,
            **_TEXTURED,
            steps=400,
        ),
        _method("lora+views+varied-prior", f"{_VIEWS}; {_VARIED}", trainable="lora", views=4, prior_images=8),
        _method("finetune+views+varied-prior", f"{_VIEWS}; {_VARIED}", trainable="blocks", views=4, prior_images=8),
        _method("lite+hyper16", _HYPER, trainable="lite", hyper_rank=16),
        _method("lite+hyper4", _HYPER, trainable="lite", hyper_rank=4),
    )
}
# methods whose options depend on the reference's attribute: recipes layered per attribute, as `--recipe` layers
# them for a benchmark's items
_SHIPPED = ("disentangled", "views", "appearance-views", "style-views")  # make run's recipes
# what a layered method adds to its recipes (for the attributes its Recipe names)
LAYERED_EXTRA: dict[str, Recipe] = {
    "shipped+unnamed": Recipe(
        "unnamed",
        "each shape view also under the prompt without its colour and texture words (--view-unnamed)",
        train=dict(view_unnamed=True),
        attributes=("shape",),
    ),
    "shipped+text-kv": Recipe(
        "text-kv",
        "the shape's fine-tuned blocks keep the base model's text keys and values (--keep-text-projections)",
        train=dict(trainable="blocks", keep_text_projections=True),  # (a recipe is valid on its own)
        attributes=("shape",),
    ),
}
LAYERED: dict[str, tuple[str, ...]] = {"shipped": _SHIPPED} | dict.fromkeys(LAYERED_EXTRA, _SHIPPED)


def method_recipe(method: str, attribute: str | None = None) -> Recipe:
    """`method`'s options for `attribute`'s references: its recipe, or a layered method's recipes for that
    attribute (without their λ: the experiment sweeps λ itself)."""
    if method not in LAYERED:
        return METHODS[method]
    recipe = layered(LAYERED[method], attribute)
    train = dict(recipe.train)
    extra = LAYERED_EXTRA.get(method)
    if extra is not None and extra.applies_to(attribute):
        train |= extra.train
    generate = {k: v for k, v in recipe.generate.items() if k != "lam"}
    description = f"the recipes {' + '.join(LAYERED[method])} for each reference's attribute (`--recipe` layering)"
    if extra is not None:
        description += f", and {extra.description}"
    return Recipe(method, description, train, generate)


METHODS |= {name: method_recipe(name) for name in LAYERED}  # the rows' shared options (the table's params)


# the v1 table's methods: each tuning on a fixed part, to test which part carries which attribute
PAPER_METHODS = (
    "token",
    "finetune-encoder",
    "finetune-decoder",
    "finetune-unet",
    "ostaf-encoder-lite",
    "ostaf-decoder-lite",
    "ostaf-encoder-paper",
    "ostaf-decoder-paper",
    "ostaf-encoder-lite-zero",
    "ostaf-decoder-lite-zero",
)
# the v2 table's methods, each on the paper's part of each attribute
TABLE_METHODS = ("token", "finetune", "lora", "ostaf-lite", "ostaf-paper", "reference-attention")
MECHANISM_METHODS = ("ostaf-lite", *(m for m in METHODS if m.startswith("lite+")))
# how a composition's prompt writes the look's placeholder: in its own phrase (as the appearance checkpoint learned
# it), before the class (where the shape checkpoint's captioned views named their look: 'a red striped object in
# the shape of *m'), or in both places — each checkpoint then reads its placeholder in the form it was trained on
COMPOSE_PROMPTS = {
    "phrase": "an object in the shape of *m in the appearance of *a",
    "adjective": "a *a object in the shape of *m",
    "adjective+phrase": "a *a object in the shape of *m in the appearance of *a",
}


def is_compose(method: str) -> bool:
    return method.startswith("compose")


def composed_method(method: str) -> str:
    """The method a composition's row composes (`compose@0.4/shipped` → `shipped`); a method is its own."""
    return method.split("/", 1)[1] if is_compose(method) else method


def compose_name(method: str, switch: float = 0.0, look: str = "late", prompt: str = "phrase") -> str:
    """A composition's row: `compose/<method>`, or `compose@<s>/<method>` with a timestep switch s (and
    `compose@<s>+everywhere/<method>` with the look in every step); a prompt form other than the phrase is
    named in brackets (`compose[adjective+phrase]/<method>`)."""
    form = "" if prompt == "phrase" else f"[{prompt}]"
    if not switch:
        return f"compose{form}/{method}"
    return f"compose{form}@{switch:g}{'' if look == 'late' else f'+{look}'}/{method}"


def compose_prompt(method: str) -> str:
    """The prompt a composition's row was generated from (`compose[adjective]/token` → the adjective form's)."""
    head = method.split("/", 1)[0]
    return COMPOSE_PROMPTS[head[head.index("[") + 1 : head.index("]")] if "[" in head else "phrase"]


def trains_as(method: str) -> list[str]:
    """The methods without generation options whose training is exactly `method`'s, when `method` has some: a
    generation variant (the DreamTuner path, `disentangled+lambda`) takes their tuned steps, lr and λ unless the
    search tuned it itself."""
    if not METHODS[method].generate:
        return []
    return [m for m, r in METHODS.items() if not r.generate and r.train == METHODS[method].train]


def generate_options(method: str, attribute: str | None = None) -> dict[str, Any]:
    """The generation options of `method` on `attribute`'s references. A composition (`compose/<method>`) takes
    both checkpoints' methods' options (a layered method's shape recipe blends its fine-tuned weights with
    --token-lambda: so must the pair, or a timestep switch could not turn them off)."""
    base = composed_method(method)
    if base not in METHODS:
        return {}
    if is_compose(method):  # one sampler for the pair: the experiment's (a recipe's own is for its attribute)
        pair = {k: v for a in ("shape", "appearance") for k, v in method_recipe(base, a).generate.items()}
        return {k: v for k, v in pair.items() if k not in SAMPLER_OPTIONS}
    return dict(method_recipe(method, attribute).generate)


def reads_lambda(method: str, attribute: str | None = None) -> bool:
    """Whether λ changes what `method` generates on `attribute`'s references: an adapter scales with it, or the
    reference's weight does, or the token's blend. A token or fine-tuned weights without the blend are one model at
    every λ, so their sweep is rendered once."""
    base = composed_method(method)
    if base not in METHODS:
        return False
    attributes = ("shape", "appearance") if is_compose(method) else (attribute,)  # a composition: either one's
    generation = generate_options(method, attribute)
    return (
        any(method_recipe(base, a).train["trainable"] in ADAPTER_OF for a in attributes)
        or generation.get("reference_lambda", False)
        or generation.get("token_lambda", False)
    )


def reference_options(method: str, ref: Reference) -> dict[str, Any]:
    """Training options a method takes from its reference (TrainConfig overrides): the varied prior's prompts,
    the views' class in the world's words (a flat fill is the texture the world calls plain)."""
    options: dict[str, Any] = {}
    if "+varied-prior" in method:
        options["prior_prompt"] = varied_class_prompts(ref.attribute, ref.world().factors)
    train = method_recipe(method, ref.attribute).train if method in METHODS else {}
    if train.get("views") and not train.get("view_textures") and ref.attribute == "shape":
        options["view_class"] = "{colour} plain object"  # the world's word for a flat fill
    return options


def tracking_params(method: str) -> dict[str, Any]:
    """A table row's MLflow params: its training options, and its generation options as `generate.<name>`."""
    recipe = METHODS.get(method)
    if recipe is None:
        return {}
    return dict(recipe.train) | {f"generate.{k}": v for k, v in recipe.generate.items()}
