"""`visionq models tiny DIR`: tiny random-weight models of the default classes, offline.

Same classes, same processors, same folder layout as the real models, saved with
save_pretrained (safetensors), so a worker loads them through exactly the code
path it uses for Hugging Face ids. Tokenizers are trained here from a few words;
no hub is contacted. Outputs are meaningless; sizes make every model load and run
in milliseconds. Seeded: the same seed builds the same weights.
"""
from __future__ import annotations

import json
from pathlib import Path

from tasks.settings import MODEL_DIR_NAMES

MARKER = "VISIONQ_TINY.txt"
SEMANTIC_LABELS = ["sky", "tree", "road", "person", "car", "house", "sun"]
_WORDS = (
    "a an the of in on with and photo picture image painting watercolor of cat dog car person sky "
    "tree road house sun fox red blue green yellow big small bright dark"
).split()
_TEXT_POSITIONS = 16  # the tiny text encoders' token limit (real CLIP: 77)


def is_tiny_dir(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def build_tiny_models(dest: str | Path, seed: int = 0) -> dict[str, Path]:
    import torch

    from worker.loading import quiet_libraries

    quiet_libraries()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    paths = {role: dest / name for role, name in MODEL_DIR_NAMES.items()}
    torch.manual_seed(seed)
    _build_caption(paths["caption"])
    torch.manual_seed(seed + 1)
    _build_prompted_segmenter(paths["segment"])
    torch.manual_seed(seed + 2)
    _build_semantic_segmenter(paths["semantic"])
    torch.manual_seed(seed + 3)
    _build_generator(paths["generate"])
    (dest / MARKER).write_text(
        "Tiny random-weight models built by `visionq models tiny` for tests and offline demos.\n"
        "Their outputs are noise. Do not use them for anything else.\n"
    )
    return paths


def _corpus() -> list[str]:
    return [" ".join(_WORDS[i:] + _WORDS[:i]) for i in range(len(_WORDS))]


def _wordpiece_vocab() -> dict[str, int]:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    tokenizer.train_from_iterator(_corpus(), trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials))
    return tokenizer.get_vocab()


def _clip_tokenizer() -> object:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    bpe = Tokenizer(models.BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|startoftext|>", "<|endoftext|>"], end_of_word_suffix="</w>"
    )
    bpe.train_from_iterator(_corpus(), trainer)
    raw_merges = json.loads(bpe.to_str())["model"]["merges"]
    # tokenizers 0.23 wants merges as tuples ("failed to extract enum PyMerges" otherwise).
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in raw_merges]
    # model_max_length must not exceed the text encoder's positions, or SD overflows.
    return CLIPTokenizer(
        vocab=bpe.get_vocab(), merges=merges, model_max_length=_TEXT_POSITIONS, pad_token="<|endoftext|>"
    )


def _clip_text_config(tokenizer: object) -> dict:
    return dict(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=_TEXT_POSITIONS, projection_dim=16,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _build_caption(path: Path) -> None:
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    # BLIP starts decoding at its [DEC] token (bos) and stops at [SEP].
    tokenizer = BertTokenizer(vocab=_wordpiece_vocab(), do_lower_case=True, bos_token="[DEC]", model_max_length=64)
    layers = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    config = BlipConfig(
        text_config=dict(
            vocab_size=len(tokenizer), max_position_embeddings=64, bos_token_id=tokenizer.bos_token_id,
            sep_token_id=tokenizer.sep_token_id, eos_token_id=tokenizer.sep_token_id,
            pad_token_id=tokenizer.pad_token_id,
            initializer_range=0.2,  # with the default 0.02 the caption barely depends on the image
            **layers,
        ),
        vision_config=dict(image_size=32, patch_size=8, initializer_range=0.2, **layers),
        projection_dim=16,
    )
    BlipForConditionalGeneration(config).eval().save_pretrained(path)
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer)
    processor.save_pretrained(path)


def _build_prompted_segmenter(path: Path) -> None:
    from transformers import CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, ViTImageProcessor

    tokenizer = _clip_tokenizer()
    config = CLIPSegConfig(
        text_config=_clip_text_config(tokenizer),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
        extract_layers=[0, 1],  # the default (3, 6, 9) indexes layers a 2-layer model lacks
        reduce_dim=8, decoder_num_attention_heads=2, decoder_intermediate_size=16,
    )
    CLIPSegForImageSegmentation(config).eval().save_pretrained(path)
    CLIPSegProcessor(image_processor=ViTImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer).save_pretrained(path)


def _build_semantic_segmenter(path: Path) -> None:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    config = SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[8, 16], patch_sizes=[7, 3],
        strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=16,
        num_labels=len(SEMANTIC_LABELS), initializer_range=0.5,
        id2label=dict(enumerate(SEMANTIC_LABELS)), label2id={l: i for i, l in enumerate(SEMANTIC_LABELS)},
    )
    SegformerForSemanticSegmentation(config).eval().save_pretrained(path)
    SegformerImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)


def _build_generator(path: Path) -> None:
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = _clip_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(**_clip_text_config(tokenizer)))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4,
    )
    # Four blocks: the VAE downsamples by 8 like the real one, so sizes mean the same.
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8), latent_channels=4, norm_num_groups=4, layers_per_block=1, sample_size=64,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="trailing", steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
