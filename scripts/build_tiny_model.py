"""Build the tiny offline Llama model that the real vLLM CPU server serves in tests and benchmarks.

Usage (in the vLLM venv, which has torch, transformers and tokenizers):
    .cache/vllm-venv/bin/python scripts/build_tiny_model.py OUTDIR

Writes a Hugging Face model directory: a 2-layer ``LlamaConfig`` (hidden 256, 4 heads of size 64 --
a head size vLLM's CPU attention supports -- 2 KV heads) with random weights from a fixed seed, saved as
bf16 safetensors, plus a byte-level BPE tokenizer trained on generated text and wrapped as a fast
tokenizer with ChatML specials and a ChatML chat template. No hub access. The same command writes the
same bytes every time (seeded text, seeded weights, single-threaded tokenizer training), so the
prompt token counts that tests and benchmarks rely on are stable.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

# Before importing tokenizers: its trainer is then single-threaded, which keeps merges reproducible.
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

VOCAB_SIZE = 2048
SEED = 20261128
BOS, EOS, PAD, IM_START, IM_END = "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [BOS, EOS, PAD, IM_START, IM_END]
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
COMMON_WORDS = (
    "the a an of to and in is it that for on with as was be by this are or from at not but have you "
    "your we they he she what which when where who how why can will would should could may one two "
    "three four five hello world system user assistant question answer please tell me about write "
    "story cache prefix token model request response stream gateway engine server time data test"
).split()


def training_corpus(rng: random.Random, lines: int = 6000) -> list[str]:
    """Generated English-like text: common words, seeded pseudo-words, numbers and punctuation."""
    consonants, vowels = "bcdfghjklmnprstvwz", "aeiou"
    pseudo_words = [
        "".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(rng.randint(1, 4)))
        for _ in range(800)
    ]
    corpus = []
    for _ in range(lines):
        words = []
        for _ in range(rng.randint(4, 20)):
            roll = rng.random()
            if roll < 0.55:
                word = rng.choice(COMMON_WORDS)
            elif roll < 0.9:
                word = rng.choice(pseudo_words)
            else:
                word = str(rng.randint(0, 9999))
            words.append(word.capitalize() if rng.random() < 0.08 else word)
        corpus.append(" ".join(words) + rng.choice([".", "?", "!", ",", ":", ";", "\n"]))
    return corpus


def build_tokenizer(rng: random.Random) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(training_corpus(rng), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START, IM_END],
        chat_template=CHATML_TEMPLATE,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )


def build_model(tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="bfloat16",
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    return model.to(torch.bfloat16).eval()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out_dir = Path(argv[1])
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)
    tokenizer = build_tokenizer(rng)
    model = build_model(tokenizer)
    model.save_pretrained(out_dir, safe_serialization=True)
    # Chat turns end with <|im_end|>; plain completions with </s>. Either stops generation.
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(IM_END)],
        pad_token_id=tokenizer.pad_token_id,
    )
    model.generation_config.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    params = sum(p.numel() for p in model.parameters())
    print(f"tiny model: {params / 1e6:.2f}M parameters, vocab {len(tokenizer)} -> {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
