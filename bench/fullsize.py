"""Full-size random-weight copies of the default models, built offline from inline configs.

No model hub is reachable from where this project is built and tested, so the
GPU benchmark builds the default models' architectures itself: the same
classes, layer counts, widths, vocabularies, text lengths and input
resolutions as the published configs (hence the same compute), random
weights. Saved with `save_pretrained` in the folder layout of `visionq models
tiny`, they load through exactly the worker's own code path.

PUBLISHED_PARAMETERS holds each real model's parameter count, so a test can
check that every config here builds the architecture it claims to.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import diffusers.utils.logging as diffusers_logging
import torch
import transformers.utils.logging as transformers_logging
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import (
    BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor, CLIPSegConfig,
    CLIPSegForImageSegmentation, CLIPSegProcessor, CLIPTextConfig, CLIPTextModel, CLIPTokenizer, SegformerConfig,
    SegformerForSemanticSegmentation, SegformerImageProcessor, ViTImageProcessor,
)

from tasks.settings import MODEL_DIR_NAMES

# Parameters of the published checkpoints. BLIP's is as its model page rounds it (247M):
# its checkpoint stores the output embedding tied to the input one as a second tensor.
PUBLISHED_PARAMETERS: dict[str, int] = {
    "blip-image-captioning-base": 247_400_000,
    "clipseg-rd64-refined": 150_747_746,
    "segformer-b0-finetuned-ade-512-512": 3_752_694,
    "sd-turbo unet": 865_910_724,
    "sd-turbo vae": 83_653_863,
    "sd-turbo text_encoder": 340_387_840,
}

BLIP_VOCAB = 30524  # BERT's 30522 plus BLIP's [DEC] and [ENC]
CLIP_VOCAB = 49408
CLIP_POSITIONS = 77
OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
_WORDS = sorted(set("a an the of in on with photo picture cat dog fox car person sky tree road watercolor".split()))
_LETTERS = sorted({letter for word in _WORDS for letter in word})


# ---------------------------------------------------------------------------- tokenizers

def bert_tokenizer() -> BertTokenizer:
    """A WordPiece tokenizer with BLIP's vocabulary size; unused slots are fillers never produced."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]"]
    tokens = specials + _WORDS + _LETTERS + [f"##{letter}" for letter in _LETTERS]
    tokens += [f"[unused{n}]" for n in range(BLIP_VOCAB - len(tokens))]
    return BertTokenizer(vocab={token: i for i, token in enumerate(tokens)}, do_lower_case=True, bos_token="[DEC]",
                         model_max_length=512)


def clip_tokenizer() -> CLIPTokenizer:
    """A BPE tokenizer with CLIP's vocabulary size and 77-token limit (SD pads every prompt to 77)."""
    merges = {(word[:i], word[i] + ("</w>" if i == len(word) - 1 else "")) for word in _WORDS for i in range(1, len(word))}
    tokens = ["<|startoftext|>", "<|endoftext|>", *_LETTERS, *(f"{letter}</w>" for letter in _LETTERS)]
    tokens += sorted({left + right for left, right in merges} - set(tokens))
    tokens += [f"<|unused{n}|>" for n in range(CLIP_VOCAB - len(tokens))]
    ranked = sorted(merges, key=lambda merge: (len(merge[0]) + len(merge[1]), merge))
    return CLIPTokenizer(vocab={token: i for i, token in enumerate(tokens)}, merges=ranked,
                         model_max_length=CLIP_POSITIONS, pad_token="<|endoftext|>")


# ---------------------------------------------------------------------------- configs

def _clip_text(tokenizer: CLIPTokenizer, **sizes: Any) -> dict[str, Any]:
    return dict(vocab_size=len(tokenizer), max_position_embeddings=CLIP_POSITIONS,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, **sizes)


def blip_config(tokenizer: BertTokenizer) -> BlipConfig:
    """Salesforce/blip-image-captioning-base: ViT-B/16 at 384 px, a 12-layer BERT-base decoder."""
    return BlipConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=768, encoder_hidden_size=768, intermediate_size=3072,
            num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=512,
            bos_token_id=tokenizer.bos_token_id, sep_token_id=tokenizer.sep_token_id,
            eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=384, patch_size=16, layer_norm_eps=1e-5),
        projection_dim=512,
    )


def clipseg_config(tokenizer: CLIPTokenizer) -> CLIPSegConfig:
    """CIDAS/clipseg-rd64-refined: CLIP ViT-B/16, a 64-wide decoder with the refined transposed conv."""
    return CLIPSegConfig(
        text_config=_clip_text(tokenizer, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                               num_attention_heads=8),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=224, patch_size=16),
        projection_dim=512, extract_layers=[3, 6, 9], reduce_dim=64, decoder_num_attention_heads=4,
        decoder_intermediate_size=2048, conditional_layer=0, use_complex_transposed_convolution=True,
    )


def segformer_config() -> SegformerConfig:
    """nvidia/segformer-b0-finetuned-ade-512-512: MiT-b0 encoder, 150 ADE20K classes."""
    classes = [f"class-{n}" for n in range(150)]
    return SegformerConfig(
        num_encoder_blocks=4, depths=[2, 2, 2, 2], sr_ratios=[8, 4, 2, 1], hidden_sizes=[32, 64, 160, 256],
        patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2], num_attention_heads=[1, 2, 5, 8], mlp_ratios=[4, 4, 4, 4],
        decoder_hidden_size=256, num_labels=len(classes), id2label=dict(enumerate(classes)),
        label2id={name: n for n, name in enumerate(classes)},
    )


def sd_turbo_text_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    """stabilityai/sd-turbo's text encoder: OpenCLIP ViT-H/14's text tower, 23 of its 24 layers."""
    return CLIPTextConfig(**_clip_text(tokenizer, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                                       num_attention_heads=16, hidden_act="gelu", projection_dim=512))


SD_TURBO_UNET: dict[str, Any] = dict(  # SD 2.1's UNet at 512 px (64x64 latents)
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True, norm_num_groups=32,
)
SD_TURBO_VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    latent_channels=4, norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
)
SD_TURBO_SCHEDULER: dict[str, Any] = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="trailing", steps_offset=1,
    prediction_type="epsilon", num_train_timesteps=1000,
)


# ---------------------------------------------------------------------------- building

def parameter_counts(device: str = "meta") -> dict[str, int]:
    """Each architecture's parameter count, built on `device` ("meta": no memory, no time).

    Tied tensors count once per place they are stored, as in the checkpoints."""
    bert, clip = bert_tokenizer(), clip_tokenizer()
    with torch.device(device):
        models = {
            "blip-image-captioning-base": BlipForConditionalGeneration(blip_config(bert)),
            "clipseg-rd64-refined": CLIPSegForImageSegmentation(clipseg_config(clip)),
            "segformer-b0-finetuned-ade-512-512": SegformerForSemanticSegmentation(segformer_config()),
            "sd-turbo unet": UNet2DConditionModel(**SD_TURBO_UNET),
            "sd-turbo vae": AutoencoderKL(**SD_TURBO_VAE),
            "sd-turbo text_encoder": CLIPTextModel(sd_turbo_text_config(clip)),
        }
    return {name: sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
            for name, model in models.items()}


def build_full_size_models(dest: Path, device: str = "cuda", dtype: torch.dtype = torch.float16) -> dict[str, Path]:
    """Write every default model under `dest` (MODEL_DIR_NAMES layout); returns role -> folder.

    Weights are initialised on `device` (seconds on a GPU, minutes on a CPU) and saved in `dtype`."""
    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()
    paths = {role: Path(dest) / name for role, name in MODEL_DIR_NAMES.items()}
    bert, clip = bert_tokenizer(), clip_tokenizer()
    torch.manual_seed(0)
    with torch.device(device):
        BlipForConditionalGeneration(blip_config(bert)).to(dtype).save_pretrained(paths["caption"])
        CLIPSegForImageSegmentation(clipseg_config(clip)).to(dtype).save_pretrained(paths["segment"])
        SegformerForSemanticSegmentation(segformer_config()).to(dtype).save_pretrained(paths["semantic"])
        pipe = StableDiffusionPipeline(
            vae=AutoencoderKL(**SD_TURBO_VAE).to(dtype),
            text_encoder=CLIPTextModel(sd_turbo_text_config(clip)).to(dtype),
            tokenizer=clip, unet=UNet2DConditionModel(**SD_TURBO_UNET).to(dtype),
            scheduler=EulerDiscreteScheduler(**SD_TURBO_SCHEDULER), safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.save_pretrained(paths["generate"])
    BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 384, "width": 384}, image_mean=OPENAI_CLIP_MEAN,
                                           image_std=OPENAI_CLIP_STD),
        tokenizer=bert,
    ).save_pretrained(paths["caption"])
    CLIPSegProcessor(
        image_processor=ViTImageProcessor(size={"height": 352, "width": 352}, image_mean=IMAGENET_MEAN,
                                          image_std=IMAGENET_STD),
        tokenizer=clip,
    ).save_pretrained(paths["segment"])
    SegformerImageProcessor(size={"height": 512, "width": 512}).save_pretrained(paths["semantic"])
    return paths
