"""Speculative decoding on the default model (SmolLM2-135M-Instruct, GGUF): replies that repeat text get drafts
accepted, and greedy output stays exactly the same as without speculation.

Verification and plain decoding both run the fused native step, which rounds a token's sums the same way in any
batch: the matmuls keep one accumulator per token, and the attention cuts a token's context into splits by its
own length (attention_splits). The third prompt is long enough (over 512 tokens) that its tokens' attention is
split, where a split count that followed the batch size once flipped a near-tie.
"""

from __future__ import annotations

from ember.engine.engine_config import CacheConfig, EngineConfig
from ember.engine.llm_engine import LLMEngine
from ember.engine.sampling_params import SamplingParams
from ember.engine.speculation.config import SpeculationConfig, SpeculationParams
from ember.models.loader import LoadedModel

USERS = (
    "Repeat this line three times: the cat sat on the mat.",
    "Copy this list exactly: apple, banana, cherry, apple, banana, cherry, apple, banana, cherry.",
)
DOCUMENT = (
    "The harbour town of Wensley lies at the mouth of the river Aln. Its fishing fleet once numbered two "
    "hundred boats. In 1851 the railway reached the town, and the first visitors arrived from the cities. "
    "The old lighthouse was built in 1790 and still guides ships past the northern rocks. "
)
USERS += (f"{DOCUMENT * 10}\nWrite a long story about the town above and its lighthouse.",)
LIST_REPLY = "The list is: apple, banana, cherry, apple, banana, cherry, apple, banana, cherry"


def _generate(model: LoadedModel, mode: str, prediction: str | None = None) -> list[tuple[list[int], int]]:
    config = EngineConfig(
        cache=CacheConfig(block_size=16),
        kv_cache_gib=0.1,
        speculation=SpeculationConfig(prompt_lookup=mode),
        debug_invariants=True,
    )
    engine = LLMEngine(model, config)
    results = []
    for i, user in enumerate(USERS):
        prompt = engine.tokenizer.encode(f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
        speculation = None
        if prediction is not None:
            speculation = SpeculationParams(prediction_token_ids=tuple(engine.tokenizer.encode(prediction)))
        engine.add_request(
            f"r{i}", prompt, SamplingParams(max_tokens=48, temperature=0.0, speculation=speculation)
        )
        while engine.has_unfinished():
            for output in engine.step():
                if output.finished:
                    results.append((output.outputs[0].token_ids, output.accepted_prediction_tokens))
    engine.check_invariants()
    return results


def test_prompt_lookup_and_prediction_keep_greedy_replies_on_the_default_model(
    smollm_served_model: LoadedModel,
) -> None:
    default_model = smollm_served_model  # as `ember serve` loads it, once for the session (tests/conftest.py)
    plain = [tokens for tokens, _ in _generate(default_model, "off")]
    lookup = _generate(default_model, "on")
    assert [tokens for tokens, _ in lookup] == plain
    assert sum(accepted for _, accepted in lookup) > 20
    predicted = _generate(default_model, "off", prediction=LIST_REPLY)
    assert [tokens for tokens, _ in predicted] == plain
    assert predicted[1][1] > 15  # the list reply follows the prediction
