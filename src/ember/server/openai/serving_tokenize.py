"""POST /v1/tokenize and /v1/detokenize, with vLLM's request and response shapes. Both run on the preparation
threads, the JSON of the answer included: a 1M-token prompt or token list takes seconds to encode or decode."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi.responses import JSONResponse, Response

from ember.server.common.prompts import check_token_ids
from ember.server.common.services import ServingState
from ember.server.openai.protocol import DetokenizeRequest, TokenizeRequest


class TokenizeServing:
    def __init__(self, state: ServingState) -> None:
        self.state = state

    async def tokenize(self, body: TokenizeRequest) -> Response:
        return await self.state.preparation.run(self._tokenize, body)

    async def detokenize(self, body: DetokenizeRequest) -> JSONResponse:
        return await self.state.preparation.run(self._detokenize, body)

    def _tokenize(self, body: TokenizeRequest) -> Response:
        encoder = self.state.preparation.encoder
        self.state.models.resolve(body.model)
        if body.messages is not None:
            text = encoder.render_chat(
                [m.for_template() for m in body.messages],
                add_generation_prompt=body.add_generation_prompt is not False,
                template_kwargs=body.chat_template_kwargs,
            )
            # The rendered chat already holds its special tokens; only add more when asked to.
            tokens = encoder.encode_text(text, "messages", add_special_tokens=bool(body.add_special_tokens))
        else:
            add_special = body.add_special_tokens is not False
            tokens = encoder.encode_text(body.prompt or "", "prompt", add_special_tokens=add_special)
        body = f'{{"count": {len(tokens)}, "max_model_len": {self.state.max_model_len}, "tokens": [{_joined_ids(tokens)}]}}'
        return Response(body, media_type="application/json")

    def _detokenize(self, body: DetokenizeRequest) -> JSONResponse:
        self.state.models.resolve(body.model)
        tokens = check_token_ids(body.tokens, self.state.engine.model_config.vocab_size, "tokens")
        return JSONResponse({"prompt": self.state.engine.tokenizer.decode(tokens)})


def _joined_ids(ids: Sequence[int], chunk: int = 65536) -> str:
    """The ids comma-joined, a chunk at a time: json.dumps of 1M ids holds the GIL ~0.3 s in one C call, and
    so would stall the event loop even from this thread; between chunks the loop gets its turn."""
    return ",".join(",".join(map(str, ids[start : start + chunk])) for start in range(0, len(ids), chunk))
