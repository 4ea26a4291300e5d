"""`visionq models tiny DIR`: a tiny random-weight model of every family in the catalogue, offline.

Same model classes, processors and folder layout as the real models (tasks.models:
one sub-folder per model name), saved with save_pretrained (safetensors), so a worker
loads them through exactly the code path it uses for Hugging Face ids. Tokenizers are
built here from a few words; no hub is contacted. Outputs are noise (though each caption
family speaks its own words, see worker/tiny_captioners.py); sizes make every model load
and run in milliseconds. Seeded: the same seed writes the same bytes.
"""
from __future__ import annotations

from pathlib import Path

import diffusers.utils.logging as diffusers_logging
import torch
import transformers.utils.logging as transformers_logging
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import (
    CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, CLIPTextConfig, CLIPTextModel, CLIPTokenizer,
    Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor, SamConfig, SamImageProcessor, SamModel,
    SamProcessor, SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor, ViTImageProcessor,
)

from tasks.models import CATALOGUE
from worker.pipelines.detect_segment import DETECTOR_FOLDER, SEGMENTER_FOLDER
from worker.tiny_captioners import build_blip, build_vit_gpt2, build_vlm

MARKER = "VISIONQ_TINY.txt"
SEMANTIC_CLASSES = ["sky", "tree", "road", "person", "car"]

# The tokenizers' words. Fixed tokens rather than a trained tokenizer: the `tokenizers`
# trainers break ties in hash order, so one corpus gives a different vocabulary each run.
_WORDS = sorted(set(
    "a an and the of in on with under photo picture image painting watercolor cat dog fox car person "
    "sky tree road house sun red blue green yellow big small bright dark".split()
))
_LETTERS = sorted({letter for word in _WORDS for letter in word})
# Text limits in tokens, special tokens included. CLIP's is 77, but at 16 a label within
# the label character cap can exceed it, so the refusal is testable end to end.
_CLIP_POSITIONS = 16


def is_tiny_dir(path: str | Path) -> bool:
    """Whether `path` is a folder built here, or one model folder inside it."""
    path = Path(path)
    return (path / MARKER).is_file() or (path.parent / MARKER).is_file()


def build_tiny_models(dest: Path, seed: int = 0) -> dict[str, Path]:
    """Write one tiny model per catalogue entry under `dest`; returns model name (``kind/name``) -> folder."""
    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    # Each model's weights depend on the seed and its place here only, not on what else is built.
    builders = {
        "caption/blip": build_blip,
        "segment/clipseg": _build_prompted_segmenter,
        "segment/segformer": _build_semantic_segmenter,
        "generate/sd": _build_generator,
        "caption/vit-gpt2": build_vit_gpt2,
        "caption/vlm": build_vlm,
        "segment/owlv2-sam": _build_detect_segmenter,
    }
    folders = {entry.full_name: dest / entry.folder for entry in CATALOGUE}
    for offset, (name, build) in enumerate(builders.items()):
        torch.manual_seed(seed + offset)
        build(folders[name])
    (dest / MARKER).write_text(
        "Tiny RANDOM-WEIGHT models built by `visionq models tiny` for tests and offline demos.\n"
        "Their outputs are noise. The folders load like the real models, through the same code.\n"
    )
    return folders


def _ordered(tokens: set[str], specials: list[str]) -> dict[str, int]:
    return {token: i for i, token in enumerate(specials + sorted(tokens, key=lambda t: (len(t), t)))}


def _clip_tokenizer(pad_first: bool = False) -> CLIPTokenizer:
    # BPE merges that join each word letter by letter, its last letter marked "</w>".
    merges = {
        (word[:i], word[i] + ("</w>" if i == len(word) - 1 else "")) for word in _WORDS for i in range(1, len(word))
    }
    tokens = {*_LETTERS, *(f"{letter}</w>" for letter in _LETTERS), *(left + right for left, right in merges)}
    # Shorter results first: a merge's parts are then always made by earlier merges.
    # Tuples, not "a b" strings: tokenizers 0.23 fails on those ("failed to extract enum PyMerges").
    ranked = sorted(merges, key=lambda merge: (len(merge[0]) + len(merge[1]), merge))
    # model_max_length unset overflows in Stable Diffusion; it must not exceed the positions.
    if pad_first:
        # OWLv2 takes a query whose first id is 0 for padding: id 0 must be the pad, never the start token.
        return CLIPTokenizer(vocab=_ordered(tokens, ["!", "<|startoftext|>", "<|endoftext|>"]), merges=ranked,
                             model_max_length=_CLIP_POSITIONS, pad_token="!")
    return CLIPTokenizer(vocab=_ordered(tokens, ["<|startoftext|>", "<|endoftext|>"]), merges=ranked,
                         model_max_length=_CLIP_POSITIONS, pad_token="<|endoftext|>")


def _clip_text_config(tokenizer: CLIPTokenizer) -> dict:
    # eos must be the real end token: CLIP pools the text at the eos position.
    return dict(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=_CLIP_POSITIONS, projection_dim=16,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _build_prompted_segmenter(path: Path) -> None:
    tokenizer = _clip_tokenizer()
    config = CLIPSegConfig(
        text_config=_clip_text_config(tokenizer),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
        extract_layers=[0, 1],  # the default (3, 6, 9) indexes layers a 2-layer model lacks: bare IndexError
        reduce_dim=8, decoder_num_attention_heads=2, decoder_intermediate_size=16,
    )
    CLIPSegForImageSegmentation(config).save_pretrained(path)
    image_processor = ViTImageProcessor(size={"height": 32, "width": 32})
    CLIPSegProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)


def _build_semantic_segmenter(path: Path) -> None:
    # Every per-block list needs num_encoder_blocks entries.
    config = SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16], patch_sizes=[7, 3],
        strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=16,
        initializer_range=0.5,  # wide weights: several classes win somewhere, not one everywhere
        num_labels=len(SEMANTIC_CLASSES), id2label=dict(enumerate(SEMANTIC_CLASSES)),
        label2id={name: i for i, name in enumerate(SEMANTIC_CLASSES)},
    )
    SegformerForSemanticSegmentation(config).save_pretrained(path)
    SegformerImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)


def _build_detect_segmenter(path: Path) -> None:
    """OWLv2 (boxes for text labels) beside SAM (a mask per box), in detector/ and segmenter/."""
    tokenizer = _clip_tokenizer(pad_first=True)
    layers = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  initializer_range=0.2)
    text = _clip_text_config(tokenizer)
    text.update(layers, pad_token_id=0)
    detector = Owlv2Config(text_config=text, vision_config=dict(image_size=32, patch_size=8, **layers),
                           projection_dim=16)
    Owlv2ForObjectDetection(detector).save_pretrained(path / DETECTOR_FOLDER)
    # The image processor's square must be the vision encoder's image_size.
    Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 32, "width": 32}),
                   tokenizer=tokenizer).save_pretrained(path / DETECTOR_FOLDER)
    # SAM: 2 x num_pos_feats = the prompt encoder's and mask decoder's hidden size = the
    # vision neck's output channels; the processor pads to the vision image_size.
    segmenter = SamConfig(
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8, output_channels=8, num_pos_feats=4, global_attn_indexes=[0],
                           window_size=2, mlp_dim=32),
        prompt_encoder_config=dict(hidden_size=8, image_size=32, patch_size=8, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=8, num_hidden_layers=2, num_attention_heads=2, mlp_dim=16,
                                 iou_head_hidden_dim=8),
        initializer_range=0.2,
    )
    SamModel(segmenter).save_pretrained(path / SEGMENTER_FOLDER)
    SamProcessor(image_processor=SamImageProcessor(size={"longest_edge": 32}, pad_size={"height": 32, "width": 32})
                 ).save_pretrained(path / SEGMENTER_FOLDER)


def _build_generator(path: Path) -> None:
    tokenizer = _clip_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(**_clip_text_config(tokenizer)))
    # Channel counts must be multiples of norm_num_groups.
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4,
    )
    # Four blocks: the VAE scales by 8 like the real one, so widths and heights mean the same.
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8), latent_channels=4, norm_num_groups=4, layers_per_block=1, sample_size=64,
    )
    # SD-Turbo's scheduler settings.
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="trailing",
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
