"""One request's decoding state: prefill, then one token per step, with its own sampling."""

from __future__ import annotations

import torch

from app.llm.detokenizer import IncrementalDetokenizer
from app.llm.loader import LoadedModel
from app.llm.sampling import choose_next_token, make_generator
from app.llm.stops import StopSequenceFilter
from app.llm.types import FinishReason, GenerationChunk, GenerationRequest


class SequenceDecoder:
    """Call `step()` on the inference thread until it returns a chunk with `finish_reason`."""

    def __init__(self, loaded: LoadedModel, request: GenerationRequest) -> None:
        self._loaded = loaded
        self._params = request.params
        self._prompt_tokens = len(request.prompt_ids)
        self._detokenizer = IncrementalDetokenizer(loaded.tokenizer, request.prompt_ids)
        self._stops = StopSequenceFilter(request.params.stop)
        self._generator = make_generator(request.params.seed, loaded.device)
        self._seen = torch.tensor([request.prompt_ids], dtype=torch.long, device=loaded.device)
        self._next_input = self._seen
        self._cache: object | None = None
        self.completion_tokens = 0

    def step(self) -> GenerationChunk:
        logits = self._forward(self._next_input)
        token = choose_next_token(logits[0], self._params, self._seen[0], self._generator)
        self.completion_tokens += 1
        finish: FinishReason | None = None
        text = ""
        if token in self._loaded.eos_token_ids:
            finish = "stop"
        else:
            text = self._stops.push(self._detokenizer.push(token))
            if self._stops.stopped:
                finish = "stop"
            elif self._out_of_room():
                finish = "length"
        if finish is not None:
            text += self._drain()
        else:
            token_tensor = torch.tensor([[token]], dtype=torch.long, device=self._loaded.device)
            self._next_input = token_tensor
            if self._params.repetition_penalty != 1.0:
                self._seen = torch.cat([self._seen, token_tensor], dim=-1)
        return GenerationChunk(
            text=text,
            completion_tokens=self.completion_tokens,
            prompt_tokens=self._prompt_tokens,
            finish_reason=finish,
        )

    def _forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        outputs = self._loaded.model(input_ids=input_ids, past_key_values=self._cache, use_cache=True, logits_to_keep=1)
        self._cache = outputs.past_key_values
        logits: torch.Tensor = outputs.logits[:, -1, :]
        return logits

    def _out_of_room(self) -> bool:
        return (
            self.completion_tokens >= self._params.max_tokens
            or self._prompt_tokens + self.completion_tokens >= self._loaded.context_length
        )

    def _drain(self) -> str:
        if self._stops.stopped:
            return ""
        text = self._stops.push(self._detokenizer.flush())
        return text if self._stops.stopped else text + self._stops.flush()
