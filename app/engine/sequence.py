"""One request's decoding state: its tokens, its own sampling, stops and text deltas.

The scheduler owns the forward passes; a `SequenceState` only turns the logits row the
model gave it into the next token (`choose`) and that token into a chunk of text (`accept`).
"""

from __future__ import annotations

import torch

from app.engine.detokenizer import IncrementalDetokenizer
from app.engine.sampling import choose_next_token, make_generator, without_tokens
from app.engine.stops import StopSequenceFilter
from app.engine.types import FinishReason, GenerationChunk, GenerationRequest, LoadedModel


class SequenceState:
    """Lives on the inference thread from admission to the request's last chunk."""

    def __init__(self, loaded: LoadedModel, request: GenerationRequest) -> None:
        self._loaded = loaded
        self.params = request.params
        self.prompt_tokens = len(request.prompt_ids)
        self.tokens: list[int] = list(request.prompt_ids)
        """Prompt and generated tokens; a preempted sequence is prefilled again from these."""
        self._detokenizer = IncrementalDetokenizer(loaded.tokenizer, request.prompt_ids)
        self._stops = StopSequenceFilter(request.params.stop)
        self._generator = make_generator(request.params.seed, loaded.device)
        self._penalised = self.params.repetition_penalty != 1.0
        seen = request.prompt_ids if self._penalised else ()
        self._seen = torch.tensor(seen, dtype=torch.long, device=loaded.device)
        """Tokens the repetition penalty looks at; kept empty when there is no penalty."""
        self.completion_tokens = 0
        self.finish_reason: FinishReason | None = None

    @property
    def needs_own_sampling(self) -> bool:
        """False when an argmax over the batch's logits is the answer: greedy and no penalty
        (`bans_eos` says whether over the raw logits or those with the EOS tokens masked)."""
        return not self.params.greedy or self._penalised

    @property
    def bans_eos(self) -> bool:
        """The EOS tokens may not come yet (`ignore_eos`, or `min_tokens` not reached)."""
        return self.params.ignore_eos or self.completion_tokens < self.params.min_tokens

    @property
    def last_token(self) -> int:
        return self.tokens[-1]

    def choose(self, logits: torch.Tensor) -> int:
        """Pick the next token from this sequence's 1-D logits row."""
        if self.bans_eos:
            logits = without_tokens(logits, self._loaded.eos_token_ids)
        return choose_next_token(logits, self.params, self._seen, self._generator)

    def accept(self, token: int) -> GenerationChunk:
        """Record the chosen token; the chunk carries new text and, at the end, `finish_reason`."""
        self.completion_tokens += 1
        self.tokens.append(token)
        if self._penalised:
            self._seen = torch.cat([self._seen, self._seen.new_tensor([token])])
        text = ""
        if token in self._loaded.eos_token_ids:
            self.finish_reason = "stop"
        else:
            text = self._stops.push(self._detokenizer.push(token))
            if self._stops.stopped:
                self.finish_reason = "stop"
            elif self._out_of_room():
                self.finish_reason = "length"
        if self.finish_reason is not None:
            text += self._drain()
        return GenerationChunk(
            text=text,
            completion_tokens=self.completion_tokens,
            prompt_tokens=self.prompt_tokens,
            finish_reason=self.finish_reason,
        )

    def _out_of_room(self) -> bool:
        return (
            self.completion_tokens >= self.params.max_tokens
            or self.prompt_tokens + self.completion_tokens >= self._loaded.context_length
        )

    def _drain(self) -> str:
        if self._stops.stopped:
            return ""
        text = self._stops.push(self._detokenizer.flush())
        return text if self._stops.stopped else text + self._stops.flush()
