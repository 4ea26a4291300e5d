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
    CLIPSegForImageSegmentation, CLIPSegProcessor, CLIPTextConfig, CLIPTextModel, CLIPTokenizer, GPT2Config,
    GPT2Tokenizer, Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor,
    Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor, SamConfig, SamImageProcessor, SamModel,
    SamProcessor, SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor, ViTConfig, ViTImageProcessor,
    VisionEncoderDecoderConfig, VisionEncoderDecoderModel,
)

from tasks.models import model_entry
from worker.pipelines.detect_segment import DETECTOR_FOLDER, SEGMENTER_FOLDER
from worker.tiny_captioners import VLM_CHAT_TEMPLATE, VLM_SPECIALS, byte_level_tokenizer

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
_TIED_STORED_ONCE = {"vit-gpt2-image-captioning"}
# As the model pages round them (to a million): checked to 0.5 %.
MODEL_CARD_PARAMETERS: dict[str, int] = {
    "vit-gpt2-image-captioning": 239_000_000,
    "SmolVLM-256M-Instruct": 256_000_000,
    "owlv2-base-patch16-ensemble": 155_000_000,
    "sam-vit-base": 93_700_000,
}

BLIP_VOCAB = 30524  # BERT's 30522 plus BLIP's [DEC] and [ENC]
CLIP_VOCAB = 49408
GPT2_VOCAB = 50257
SMOLLM_VOCAB = 49280
_SMOLVLM_IMAGE = 512
_SMOLVLM_SCALE = 4
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


def clip_tokenizer(owl: bool = False) -> CLIPTokenizer:
    """A BPE tokenizer with CLIP's vocabulary size and 77-token limit (SD pads every prompt to 77).

    owl: as OWLv2 uses it, 16 tokens a query, id 0 ("!", as in CLIP's real vocabulary) the pad:
    OWLv2 takes a query starting with id 0 for padding."""
    merges = {(word[:i], word[i] + ("</w>" if i == len(word) - 1 else "")) for word in _WORDS for i in range(1, len(word))}
    tokens = ["!"] if owl else []
    tokens += ["<|startoftext|>", "<|endoftext|>", *_LETTERS, *(f"{letter}</w>" for letter in _LETTERS)]
    tokens += sorted({left + right for left, right in merges} - set(tokens))
    tokens += [f"<|unused{n}|>" for n in range(CLIP_VOCAB - len(tokens))]
    ranked = sorted(merges, key=lambda merge: (len(merge[0]) + len(merge[1]), merge))
    return CLIPTokenizer(vocab={token: i for i, token in enumerate(tokens)}, merges=ranked,
                         model_max_length=16 if owl else CLIP_POSITIONS, pad_token="!" if owl else "<|endoftext|>")


def gpt2_tokenizer() -> GPT2Tokenizer:
    """Byte-level BPE with GPT-2's vocabulary size and 1024-token limit."""
    # GPT-2 has no pad token; one filler slot holds ours, so the vocabulary keeps GPT-2's size.
    return byte_level_tokenizer(_WORDS, ["<|endoftext|>", "<pad>"], 1024, vocab_size=GPT2_VOCAB)


def smollm_tokenizer() -> GPT2Tokenizer:
    """Byte-level BPE with SmolLM2's vocabulary size and SmolVLM's image and chat tokens."""
    return byte_level_tokenizer(_WORDS, VLM_SPECIALS, 8192, vocab_size=SMOLLM_VOCAB)


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


def vit_gpt2_config(tokenizer: GPT2Tokenizer) -> VisionEncoderDecoderConfig:
    """nlpconnect/vit-gpt2-image-captioning: ViT-B/16 at 224 px, GPT-2 (124M) with cross-attention."""
    end = tokenizer.eos_token_id
    encoder = ViTConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                        image_size=224, patch_size=16)
    decoder = GPT2Config(vocab_size=len(tokenizer), n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                         add_cross_attention=True, is_decoder=True, bos_token_id=end, eos_token_id=end)
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = config.bos_token_id = config.eos_token_id = config.pad_token_id = end
    return config


def smolvlm_config(tokenizer: GPT2Tokenizer) -> Idefics3Config:
    """HuggingFaceTB/SmolVLM-256M-Instruct: SigLIP-B/16 at 512 px, pixel shuffle x4, SmolLM2-135M."""
    return Idefics3Config(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
            num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
            rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
            bos_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"),
            eos_token_id=tokenizer.convert_tokens_to_ids("<end_of_utterance>"), pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=_SMOLVLM_IMAGE, patch_size=16),
        scale_factor=_SMOLVLM_SCALE, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )


def owlv2_config(tokenizer: CLIPTokenizer) -> Owlv2Config:
    """google/owlv2-base-patch16-ensemble: CLIP B/16 towers, the image at 960 px (3600 patches, one box each)."""
    text = _clip_text(tokenizer, hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8)
    text.update(max_position_embeddings=16, pad_token_id=0)  # OWLv2's queries are 16 tokens; id 0 pads
    return Owlv2Config(
        text_config=text,
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=960, patch_size=16),
        projection_dim=512,
    )


def sam_config() -> SamConfig:
    """facebook/sam-vit-base: ViT-B/16 at 1024 px with windowed attention, a 256-wide prompt encoder and decoder."""
    return SamConfig(
        vision_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=1024, patch_size=16, output_channels=256, num_pos_feats=128,
                           global_attn_indexes=[2, 5, 8, 11], window_size=14, mlp_dim=3072),
        prompt_encoder_config=dict(hidden_size=256, image_size=1024, patch_size=16),
        mask_decoder_config=dict(hidden_size=256),
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

    Tied tensors count as the checkpoints store them: BLIP's twice (its output embedding
    is saved as a second tensor), GPT-2's once."""
    bert, clip = bert_tokenizer(), clip_tokenizer()
    with torch.device(device):
        models = {
            "blip-image-captioning-base": BlipForConditionalGeneration(blip_config(bert)),
            "clipseg-rd64-refined": CLIPSegForImageSegmentation(clipseg_config(clip)),
            "segformer-b0-finetuned-ade-512-512": SegformerForSemanticSegmentation(segformer_config()),
            "sd-turbo unet": UNet2DConditionModel(**SD_TURBO_UNET),
            "sd-turbo vae": AutoencoderKL(**SD_TURBO_VAE),
            "sd-turbo text_encoder": CLIPTextModel(sd_turbo_text_config(clip)),
            "vit-gpt2-image-captioning": VisionEncoderDecoderModel(config=vit_gpt2_config(gpt2_tokenizer())),
            "SmolVLM-256M-Instruct": Idefics3ForConditionalGeneration(smolvlm_config(smollm_tokenizer())),
            "owlv2-base-patch16-ensemble": Owlv2ForObjectDetection(owlv2_config(clip_tokenizer(owl=True))),
            "sam-vit-base": SamModel(sam_config()),
        }
    return {name: sum(p.numel() for _, p in model.named_parameters(remove_duplicate=name in _TIED_STORED_ONCE))
            for name, model in models.items()}


def build_full_size_models(dest: Path, device: str = "cuda", dtype: torch.dtype = torch.float16) -> dict[str, Path]:
    """Write every catalogue model under `dest` (the tiny models' layout); returns role -> folder.

    Weights are initialised on `device` (seconds on a GPU, minutes on a CPU) and saved in `dtype`."""
    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()
    names = {"caption": "caption/blip", "segment": "segment/clipseg", "semantic": "segment/segformer",
             "generate": "generate/sd", "caption-vit-gpt2": "caption/vit-gpt2", "caption-vlm": "caption/vlm",
             "segment-owlv2-sam": "segment/owlv2-sam"}
    paths = {role: Path(dest) / model_entry(name).folder for role, name in names.items()}
    gpt2, smollm, owl = gpt2_tokenizer(), smollm_tokenizer(), clip_tokenizer(owl=True)
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
        captioner = VisionEncoderDecoderModel(config=vit_gpt2_config(gpt2)).to(dtype)
        for name in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
            setattr(captioner.generation_config, name, gpt2.eos_token_id)
        captioner.save_pretrained(paths["caption-vit-gpt2"])
        vlm = Idefics3ForConditionalGeneration(smolvlm_config(smollm)).to(dtype)
        vlm.generation_config.eos_token_id = vlm.config.text_config.eos_token_id
        vlm.generation_config.pad_token_id = smollm.pad_token_id
        vlm.save_pretrained(paths["caption-vlm"])
        Owlv2ForObjectDetection(owlv2_config(owl)).to(dtype).save_pretrained(paths["segment-owlv2-sam"] / DETECTOR_FOLDER)
        SamModel(sam_config()).to(dtype).save_pretrained(paths["segment-owlv2-sam"] / SEGMENTER_FOLDER)
    Owlv2Processor(
        image_processor=Owlv2ImageProcessor(size={"height": 960, "width": 960}, image_mean=OPENAI_CLIP_MEAN,
                                            image_std=OPENAI_CLIP_STD),
        tokenizer=owl,
    ).save_pretrained(paths["segment-owlv2-sam"] / DETECTOR_FOLDER)
    SamProcessor(image_processor=SamImageProcessor(size={"longest_edge": 1024}, pad_size={"height": 1024, "width": 1024})
                 ).save_pretrained(paths["segment-owlv2-sam"] / SEGMENTER_FOLDER)
    gpt2.save_pretrained(paths["caption-vit-gpt2"])
    ViTImageProcessor(size={"height": 224, "width": 224}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(
        paths["caption-vit-gpt2"])
    image_seq_len = (_SMOLVLM_IMAGE // 16) ** 2 // _SMOLVLM_SCALE**2
    Idefics3Processor(
        image_processor=Idefics3ImageProcessor(do_image_splitting=True, size={"longest_edge": 4 * _SMOLVLM_IMAGE},
                                               max_image_size={"longest_edge": _SMOLVLM_IMAGE}),
        tokenizer=smollm, image_seq_len=image_seq_len, chat_template=VLM_CHAT_TEMPLATE,
    ).save_pretrained(paths["caption-vlm"])
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
