"""A request's `prediction` (OpenAI / Fireworks Predicted Outputs) and ember's `prompt_lookup` as the engine's
SpeculationParams: the prediction's text tokenized as the reply would be, without special tokens."""

from __future__ import annotations

from ember.engine.speculation.config import SpeculationParams
from ember.server.common.errors import invalid_request
from ember.server.common.prompts import PromptEncoder
from ember.server.common.protocol import SamplingRequest


def speculation_params(request: SamplingRequest, encoder: PromptEncoder) -> SpeculationParams:
    """For a request with a prediction or prompt_lookup; a 400 naming prompt_lookup for a bad combination."""
    prediction = request.prediction
    lookup = request.prompt_lookup
    tokens: tuple[int, ...] = ()
    if prediction is not None and prediction.text():  # an empty prediction predicts nothing
        tokens = tuple(encoder.encode_text(prediction.text(), "prediction", add_special_tokens=False))
    try:
        return SpeculationParams(
            prediction_token_ids=tokens,
            prompt_lookup=lookup.mode if lookup else None,
            num_speculative_tokens=lookup.num_speculative_tokens if lookup else None,
            prompt_lookup_min=lookup.min_ngram if lookup else None,
            prompt_lookup_max=lookup.max_ngram if lookup else None,
        )
    except ValueError as error:
        raise invalid_request(str(error), param="prompt_lookup") from None
