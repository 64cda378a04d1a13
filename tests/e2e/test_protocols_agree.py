"""One greedy request gives the same text through every protocol and every client."""

from __future__ import annotations

import httpx
import openai
from huggingface_hub import InferenceClient
from langchain_core.messages import HumanMessage
from langchain_huggingface import ChatHuggingFace, HuggingFaceEndpoint
from langchain_openai import ChatOpenAI

from tests.conftest import LiveServer

PROMPT = "The three primary colours are"
QUESTION = "Name a fruit that is yellow."
TOKENS = 8


def test_a_raw_prompt_gives_the_same_text_everywhere(server: LiveServer, client: httpx.Client) -> None:
    native = client.post("/v1/generate", json={"prompt": PROMPT, "max_tokens": TOKENS, "temperature": 0})
    expected = native.json()["generated_text"]
    assert expected
    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key="any-key", max_retries=0)
    hf = InferenceClient(base_url=server.url)
    endpoint = HuggingFaceEndpoint(endpoint_url=server.url, max_new_tokens=TOKENS, temperature=0.0)
    answers = {
        "openai completions": sdk.completions.create(model="x", prompt=PROMPT, max_tokens=TOKENS, temperature=0)
        .choices[0]
        .text,
        "openai completions streamed": "".join(
            c.choices[0].text
            for c in sdk.completions.create(model="x", prompt=PROMPT, max_tokens=TOKENS, temperature=0, stream=True)
            if c.choices
        ),
        "tgi /generate": client.post(
            "/generate", json={"inputs": PROMPT, "parameters": {"max_new_tokens": TOKENS}}
        ).json()["generated_text"],
        "InferenceClient": hf.text_generation(PROMPT, max_new_tokens=TOKENS),
        "InferenceClient streamed": "".join(hf.text_generation(PROMPT, max_new_tokens=TOKENS, stream=True)),
        "HuggingFaceEndpoint": endpoint.invoke(PROMPT),
    }
    assert answers == dict.fromkeys(answers, expected)


def test_a_chat_gives_the_same_answer_everywhere(server: LiveServer, client: httpx.Client) -> None:
    messages = [{"role": "user", "content": QUESTION}]
    native = client.post("/v1/chat", json={"messages": messages, "max_tokens": TOKENS, "temperature": 0})
    expected = native.json()["message"]["content"]
    assert expected
    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key="any-key", max_retries=0)
    hf = InferenceClient(base_url=server.url)
    endpoint = HuggingFaceEndpoint(endpoint_url=server.url, max_new_tokens=TOKENS, temperature=0.0)
    chat_openai = ChatOpenAI(base_url=f"{server.url}/v1", api_key="any-key", model="x", temperature=0,
                             max_tokens=TOKENS, max_retries=0)  # fmt: skip
    answers = {
        "openai chat": sdk.chat.completions.create(
            model="x", messages=[{"role": "user", "content": QUESTION}], max_tokens=TOKENS, temperature=0
        )
        .choices[0]
        .message.content,
        "ChatOpenAI": chat_openai.invoke([HumanMessage(QUESTION)]).content,
        "InferenceClient chat": hf.chat_completion(messages, max_tokens=TOKENS, temperature=0)
        .choices[0]
        .message.content,
        "ChatHuggingFace": ChatHuggingFace(llm=endpoint, temperature=0.0).invoke([HumanMessage(QUESTION)]).content,
    }
    assert answers == dict.fromkeys(answers, expected)
