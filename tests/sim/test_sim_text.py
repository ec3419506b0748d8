"""The sim's tokenizer, chat template and text generator: determinism and resumability."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from backends.sim.chat import render_chat
from backends.sim.engine import Engine
from backends.sim.textgen import EOS_MAX, EOS_MIN, VOCAB, VOCAB_INDEX, TextState
from backends.sim.tokenizer import BOS, IM_END, IM_START, MAX_TOKEN_CHARS, tokenize


def generate(tokens: list[str], max_tokens: int = 200, seed: int | None = None,
             ignore_eos: bool = False) -> tuple[list[str], bool]:
    """The words the engine would generate for this context, and whether it ended with EOS."""
    state = TextState.from_tokens(tokens, seed)
    words: list[str] = []
    while len(words) < max_tokens:
        if not ignore_eos and state.wants_eos():
            return words, True
        word = state.next_word()
        state.advance(word)
        words.append(word)
    return words, False


def test_tokenize_is_lossless_and_bounded() -> None:
    text = "Hello world, the gateway sends 12345 requests_to <|im_start|>the engine\n\n  ok"
    tokens = tokenize(text)
    assert "".join(tokens) == text
    assert IM_START in tokens
    assert all(len(t) <= MAX_TOKEN_CHARS for t in tokens if t != IM_START)


def test_english_is_about_four_characters_per_token() -> None:
    text = "The quick brown fox jumps over the lazy dog while the gateway routes requests to engines. " * 20
    assert 3.0 < len(text) / len(tokenize(text)) < 5.0


def test_every_vocabulary_word_is_one_token() -> None:
    assert len(VOCAB) == len(set(VOCAB)) == 256
    for word in VOCAB:
        assert tokenize(word) == [word]
        assert tokenize("prefix." + word) == ["prefi", "x", ".", word]


@settings(max_examples=300, deadline=None)
@given(prompt=st.text(min_size=0, max_size=60), words=st.lists(st.sampled_from(VOCAB), max_size=8))
def test_tokenize_prompt_plus_generated_text_is_the_concatenation(prompt: str, words: list[str]) -> None:
    assert tokenize(prompt + "".join(words)) == tokenize(prompt) + words


def test_generation_is_deterministic_and_depends_on_the_prompt() -> None:
    a = Engine.completion_tokens("Tell me about caches")
    b = Engine.completion_tokens("Tell me about queues")
    assert generate(a) == generate(a)
    assert generate(a)[0] != generate(b)[0]


def test_fresh_generation_ends_with_eos_between_min_and_max() -> None:
    lengths = []
    for i in range(50):
        words, eos = generate(Engine.completion_tokens(f"Prompt number {i}."))
        assert eos
        lengths.append(len(words))
    assert min(lengths) >= EOS_MIN and max(lengths) <= EOS_MAX
    assert len(set(lengths)) > 5


def test_resumed_completion_continues_identically() -> None:
    prompt = "Write a story about a lighthouse."
    full, eos = generate(Engine.completion_tokens(prompt))
    assert eos
    for cut in (1, 3, len(full) - 1):
        partial = "".join(full[:cut])
        rest, rest_eos = generate(Engine.completion_tokens(prompt + partial))
        assert full[:cut] + rest == full and rest_eos


def test_resumed_chat_with_continue_final_message_continues_identically() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
    full, _ = generate(Engine.chat_tokens(render_chat(messages)), max_tokens=30, ignore_eos=True)
    partial = "".join(full[:7])
    resumed = render_chat([*messages, {"role": "assistant", "content": partial}],
                          add_generation_prompt=False, continue_final_message=True)
    rest, _ = generate(Engine.chat_tokens(resumed), max_tokens=23, ignore_eos=True)
    assert full[:7] + rest == full


def test_seed_changes_text_only_when_sampling() -> None:
    tokens = Engine.completion_tokens("Seeded prompt")
    assert generate(tokens, seed=1, ignore_eos=True, max_tokens=10) != \
        generate(tokens, seed=2, ignore_eos=True, max_tokens=10)


def test_chat_template_renders_chatml() -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "image_url"}]}]
    assert render_chat(messages) == f"{IM_START}user\nHi{IM_END}\n{IM_START}assistant\n"
    open_turn = render_chat([*messages, {"role": "assistant", "content": " so"}], add_generation_prompt=False,
                            continue_final_message=True)
    assert open_turn.endswith(f"{IM_START}assistant\n so")
    assert Engine.completion_tokens("x")[0] == BOS
    assert all(w in VOCAB_INDEX for w in generate(Engine.chat_tokens(render_chat(messages)))[0])
