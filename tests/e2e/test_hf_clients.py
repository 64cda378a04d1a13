"""huggingface_hub's InferenceClient and langchain-huggingface's HuggingFaceEndpoint + ChatHuggingFace
against the server, unchanged but for the URL."""

from __future__ import annotations

import asyncio

import pytest
from huggingface_hub import AsyncInferenceClient, InferenceClient, TextGenerationOutput, TextGenerationStreamOutput
from langchain_core.messages import HumanMessage
from langchain_huggingface import ChatHuggingFace, HuggingFaceEndpoint

from tests.conftest import LiveServer

SERVED = "smollm2-135m-instruct"
PROMPT = "Once upon a time"
QUESTION = "What is the capital of France?"


@pytest.fixture
def hf(server: LiveServer) -> InferenceClient:
    return InferenceClient(base_url=server.url)


def test_text_generation_whole_and_streamed(hf: InferenceClient) -> None:
    text = hf.text_generation(PROMPT, max_new_tokens=8)
    assert isinstance(text, str) and text
    # a seed leaves greedy decoding greedy but changes the cache key: the model streams afresh
    tokens = list(hf.text_generation(PROMPT, max_new_tokens=8, stream=True, seed=1))
    assert len([t for t in tokens if t]) >= 3
    assert "".join(tokens) == text


def test_text_generation_details(hf: InferenceClient) -> None:
    output = hf.text_generation(PROMPT, max_new_tokens=5, details=True, stop=["\n\n\n"])
    assert isinstance(output, TextGenerationOutput) and output.details is not None
    assert output.details.generated_tokens == 5 and output.details.finish_reason == "length"
    events = list(hf.text_generation(PROMPT, max_new_tokens=5, details=True, stream=True))
    assert all(isinstance(e, TextGenerationStreamOutput) for e in events)
    assert events[-1].generated_text == output.generated_text
    assert events[-1].details is not None and events[-1].details.generated_tokens == 5


def test_chat_completion_whole_and_streamed(hf: InferenceClient) -> None:
    messages = [{"role": "user", "content": QUESTION}]
    output = hf.chat_completion(messages, max_tokens=8, temperature=0)
    assert output.model == SERVED and output.choices[0].message.role == "assistant"
    content = output.choices[0].message.content
    assert content and output.usage.completion_tokens <= 8
    chunks = list(hf.chat_completion(messages, max_tokens=8, temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == content


def test_async_inference_client(server: LiveServer, hf: InferenceClient) -> None:
    async def run() -> list[str]:
        client = AsyncInferenceClient(base_url=server.url)
        return [token async for token in await client.text_generation(PROMPT, max_new_tokens=6, stream=True)]

    assert "".join(asyncio.run(run())) == hf.text_generation(PROMPT, max_new_tokens=6)


@pytest.fixture
def endpoint(server: LiveServer) -> HuggingFaceEndpoint:
    # temperature 0: greedy (HuggingFaceEndpoint samples at 0.8 by default)
    return HuggingFaceEndpoint(endpoint_url=server.url, max_new_tokens=8, temperature=0.0)


def test_huggingface_endpoint_invoke_and_stream(endpoint: HuggingFaceEndpoint) -> None:
    text = endpoint.invoke(PROMPT)  # test_protocols_agree checks it against every other client
    assert text
    assert "".join(endpoint.stream(PROMPT)) == text
    assert asyncio.run(endpoint.ainvoke(PROMPT)) == text


def test_chat_huggingface_invoke_and_stream(endpoint: HuggingFaceEndpoint) -> None:
    chat = ChatHuggingFace(llm=endpoint, temperature=0.0)
    answer = chat.invoke([HumanMessage(QUESTION)])  # test_protocols_agree checks it against every other client
    assert isinstance(answer.content, str) and answer.content
    assert "".join(str(c.content) for c in chat.stream([HumanMessage(QUESTION)])) == answer.content
