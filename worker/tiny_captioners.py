"""The tiny caption models of `visionq models tiny`: BLIP, ViT + GPT-2, and an Idefics3 (SmolVLM-style) VLM.

Each family speaks its own words (disjoint lists), and in each decoder the output rows
of every other token (letters, bytes, special tokens) are zeroed: a random decoder then
picks among its family's words only, so a caption tells which family wrote it.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
from tokenizers import pre_tokenizers
from transformers import (
    BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor, GPT2Config,
    GPT2Tokenizer, Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor, Idefics3Processor,
    ViTConfig, ViTImageProcessor, VisionEncoderDecoderConfig, VisionEncoderDecoderModel,
)

# The words each family can say. Disjoint: a caption's words name its family.
BLIP_WORDS = sorted(set(
    "a an and the of in on with under photo picture image painting watercolor cat dog fox car person "
    "sky tree road house sun red blue green yellow big small bright dark".split()
))
VIT_GPT2_WORDS = sorted("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split())
VLM_WORDS = sorted("mercury venus earth mars jupiter saturn uranus neptune pluto moon comet star".split())

_BLIP_POSITIONS = 512  # real BLIP's: max_new_tokens is refused only where the real model refuses it
_GPT2_POSITIONS = 64
_VLM_POSITIONS = 256
_IMAGE_SIDE = 32
_WIDE = 0.2  # initializer_range: at the default 0.02 a caption barely depends on the image
_VLM_WIDE = 0.5  # the image is a few tokens among the chat template's: wider still

# Idefics3's image tokens. They must be in the vocabulary before the model is sized:
# the processor adds whatever is missing, and the tokenizer then outgrows the model.
VLM_SPECIALS = ["<|endoftext|>", "<pad>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>",
                 "<image>", "<global-img>"] + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
# SmolVLM's chat template, shortened: "User:<image>instruction<end_of_utterance>\nAssistant:".
VLM_CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n"
    "{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def build_blip(path: Path) -> None:
    tokenizer = _bert_tokenizer()
    layers = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                  initializer_range=_WIDE)
    config = BlipConfig(
        text_config=dict(
            vocab_size=len(tokenizer), max_position_embeddings=_BLIP_POSITIONS,
            bos_token_id=tokenizer.bos_token_id, sep_token_id=tokenizer.sep_token_id,
            eos_token_id=tokenizer.sep_token_id, pad_token_id=tokenizer.pad_token_id, **layers,
        ),
        vision_config=dict(image_size=_IMAGE_SIDE, patch_size=8, **layers),
        projection_dim=16,
    )
    model = BlipForConditionalGeneration(config)
    _speak_only(model.text_decoder.get_output_embeddings(), tokenizer, [f" {w}" for w in BLIP_WORDS])
    model.save_pretrained(path)
    image_processor = BlipImageProcessor(size={"height": _IMAGE_SIDE, "width": _IMAGE_SIDE})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)


def build_vit_gpt2(path: Path) -> None:
    tokenizer = byte_level_tokenizer(VIT_GPT2_WORDS, ["<|endoftext|>", "<pad>"], _GPT2_POSITIONS)
    # No bos in the vocabulary's default 50256: every id must fit the tiny vocabulary.
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id, decoder_start_token_id=tokenizer.bos_token_id)
    encoder = ViTConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                        image_size=_IMAGE_SIDE, patch_size=8, initializer_range=_WIDE)
    decoder = GPT2Config(vocab_size=len(tokenizer), n_positions=_GPT2_POSITIONS, n_embd=16, n_layer=1, n_head=2,
                         add_cross_attention=True, is_decoder=True, initializer_range=_WIDE,
                         bos_token_id=ids["bos_token_id"], eos_token_id=ids["eos_token_id"],
                         pad_token_id=ids["pad_token_id"])
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    for name, value in ids.items():
        setattr(config, name, value)
    model = VisionEncoderDecoderModel(config=config)
    for name, value in ids.items():
        setattr(model.generation_config, name, value)
    _speak_only(model.decoder.get_output_embeddings(), tokenizer, [f" {w}" for w in VIT_GPT2_WORDS])
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    ViTImageProcessor(size={"height": _IMAGE_SIDE, "width": _IMAGE_SIDE}).save_pretrained(path)


def build_vlm(path: Path) -> None:
    tokenizer = byte_level_tokenizer(VLM_WORDS, VLM_SPECIALS, _VLM_POSITIONS)
    patch, scale = 4, 2
    image_seq_len = (_IMAGE_SIDE // patch) ** 2 // scale**2  # what the connector leaves of one image
    text_config = dict(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=_VLM_POSITIONS,
        initializer_range=_VLM_WIDE, bos_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<end_of_utterance>"), pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    config = Idefics3Config(
        text_config=text_config,
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=_IMAGE_SIDE, patch_size=patch, initializer_range=_VLM_WIDE),
        scale_factor=scale, image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False,
    )
    model = Idefics3ForConditionalGeneration(config)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.generation_config, name, text_config[name])
    _speak_only(model.get_output_embeddings(), tokenizer, [f" {w}" for w in VLM_WORDS])
    # Like SmolVLM, a large image is split into crops of the encoder's side plus the whole:
    # a wide and a tall image get different numbers of image tokens, so batches pad.
    image_processor = Idefics3ImageProcessor(do_image_splitting=True, size={"longest_edge": 2 * _IMAGE_SIDE},
                                             max_image_size={"longest_edge": _IMAGE_SIDE})
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                  image_seq_len=image_seq_len, chat_template=VLM_CHAT_TEMPLATE)
    if len(processor.tokenizer) != len(tokenizer.get_vocab()) or len(processor.tokenizer) != text_config["vocab_size"]:
        raise RuntimeError(f"the VLM processor grew the tokenizer to {len(processor.tokenizer)} tokens")
    model.save_pretrained(path)
    processor.save_pretrained(path)


def _bert_tokenizer() -> BertTokenizer:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    letters = sorted({letter for word in BLIP_WORDS for letter in word})
    # WordPiece needs whole words and single letters, at a word's start and inside one ("##").
    tokens = {*BLIP_WORDS, *letters, *(f"##{letter}" for letter in letters)}
    vocab = {token: i for i, token in enumerate(specials + sorted(tokens, key=lambda t: (len(t), t)))}
    # BLIP starts decoding at its [DEC] token (its bos) and stops at [SEP].
    return BertTokenizer(vocab=vocab, do_lower_case=True, bos_token="[DEC]", model_max_length=_BLIP_POSITIONS)


def byte_level_tokenizer(words: list[str], specials: list[str], max_length: int,
                         vocab_size: int | None = None) -> GPT2Tokenizer:
    """GPT-2-style byte-level BPE: all 256 byte symbols, plus each word (space-prefixed) as one token.

    Merges are trained here, deterministically: most frequent pair first, ties broken
    alphabetically. Hand-chained merges split words badly, since BPE applies the
    lowest-ranked listed merge anywhere in a word. Left padding (decoders generate after
    the last token) is a constructor argument: set afterwards, it is not saved.
    `vocab_size` pads the vocabulary with filler tokens to a real model's size.
    """
    pieces = [list("Ġ" + word) for word in words]  # "Ġ" is byte-level BPE's space
    merges: list[tuple[str, str]] = []
    while True:
        pairs = Counter(pair for word in pieces for pair in zip(word, word[1:]))
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)  # tuples: tokenizers 0.23 fails on "a b" strings
        pieces = [_merge(word, best) for word in pieces]
    tokens = list(dict.fromkeys(
        specials + sorted(pre_tokenizers.ByteLevel.alphabet()) + [left + right for left, right in merges]
    ))
    tokens += [f"<unused{n}>" for n in range((vocab_size or len(tokens)) - len(tokens))]
    vocab = {token: i for i, token in enumerate(tokens)}
    end = specials[0]
    return GPT2Tokenizer(
        vocab=vocab, merges=merges, unk_token=end, bos_token=end, eos_token=end, pad_token="<pad>",
        additional_special_tokens=specials[2:] or None, model_max_length=max_length,
        padding_side="left",
    )


def _merge(word: list[str], pair: tuple[str, str]) -> list[str]:
    merged, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            merged.append(word[i] + word[i + 1])
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return merged


def _speak_only(output_layer: torch.nn.Module, tokenizer: object, words: list[str]) -> None:
    """Zero every output row but the words': their random logits then win over the zeros."""
    keep = {token_id for word in words for token_id in _word_ids(tokenizer, word)}
    with torch.no_grad():
        for token_id in range(output_layer.weight.shape[0]):
            if token_id not in keep:
                output_layer.weight[token_id] = 0
                if getattr(output_layer, "bias", None) is not None:
                    output_layer.bias[token_id] = 0


def _word_ids(tokenizer: object, word: str) -> list[int]:
    ids = tokenizer(word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise RuntimeError(f"tiny tokenizer splits {word!r} into {ids}: the word list and merges disagree")
    return ids
