"""Chat prompts: the tokenizer's template, the default system prompt, trimming to the context."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from app.core.errors import ContextLengthExceeded
from app.engine.types import ChatMessage
from app.model.chat_format import PromptBuilder
from app.prepare.embedded_templates import GEMMA3_CHAT_TEMPLATE


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(model_dir)


def decode(tokenizer: Any, ids: tuple[int, ...]) -> str:
    return str(tokenizer.decode(list(ids)))


def test_default_system_prompt_when_the_template_has_a_system_role(tokenizer: Any) -> None:
    builder = PromptBuilder(tokenizer, 8192, "You are a careful assistant.")
    assert builder.supports_system
    text = decode(tokenizer, builder.build_chat((), [ChatMessage("user", "Hi")], 16).prompt_ids)
    assert "You are a careful assistant." in text
    assert text.rstrip().endswith("assistant")

    own = decode(
        tokenizer,
        builder.build_chat((), [ChatMessage("system", "Be brief."), ChatMessage("user", "Hi")], 16).prompt_ids,
    )
    assert "Be brief." in own and "careful assistant" not in own


def test_gemma_template_has_no_system_role_so_system_text_is_folded(tokenizer: Any) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = GEMMA3_CHAT_TEMPLATE
    builder = PromptBuilder(tokenizer, 8192, "DEFAULT SYSTEM")
    assert not builder.supports_system
    plain = decode(tokenizer, builder.build_chat((), [ChatMessage("user", "Hi")], 16).prompt_ids)
    assert "DEFAULT SYSTEM" not in plain  # no default where the model has no system role
    folded = decode(
        tokenizer,
        builder.build_chat((), [ChatMessage("system", "Be brief."), ChatMessage("user", "Hi")], 16).prompt_ids,
    )
    assert "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>" in folded


def test_history_is_trimmed_oldest_first_and_never_mid_message(tokenizer: Any) -> None:
    builder = PromptBuilder(tokenizer, 256, None)
    history = []
    for n in range(20):
        history += [ChatMessage("user", f"question {n} " + "word " * 10), ChatMessage("assistant", f"answer {n}")]
    new = [ChatMessage("user", "latest question")]
    prompt = builder.build_chat(history, new, reserve=32)

    kept = prompt.kept_history
    assert 0 < len(kept) < len(history)
    assert kept == tuple(history[-len(kept) :])  # a suffix of whole messages
    assert kept[0].role == "user"
    assert len(prompt.prompt_ids) + 32 <= 256
    text = decode(tokenizer, prompt.prompt_ids)
    assert "latest question" in text and "question 19" in text and "question 0 " not in text


def test_new_messages_that_cannot_fit_are_refused(tokenizer: Any) -> None:
    builder = PromptBuilder(tokenizer, 64, None)
    with pytest.raises(ContextLengthExceeded):
        builder.build_chat((), [ChatMessage("user", "word " * 200)], reserve=8)
    with pytest.raises(ContextLengthExceeded):
        builder.encode_prompt("word " * 200)
