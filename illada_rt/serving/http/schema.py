"""OpenAI-style request bodies checked into engine options (every broken rule raises ValueError).

/v1/completions and /v1/chat/completions take the OpenAI fields that make sense for a
masked-diffusion model, plus the diffusion ones:

    gen_length, block_length, steps      the denoising schedule (Engine.generate)
    threshold, cache, cfg_scale, remasking, stop_at_eos, stop_token_ids
    infill, mask_marker                  /v1/completions only: fill the masks of a text instead
    timeout                              seconds before the request fails with 504

Lengths: max_tokens caps the completion. Without gen_length, gen_length is max_tokens
rounded up to a multiple of block_length (block_length defaults to min(32, the length))
and the answer is cut to max_tokens tokens. steps defaults to gen_length (one token per
step). Without max_tokens and gen_length the answer is DEFAULT_GEN_LENGTH tokens.
A list of prompts gives one choice per prompt; prompt i uses seed + i.

Every cost a request's numbers tell is checked here against the server's limits
(limits.py): the prompt count, gen_length, steps, and the answer tokens of all prompts.
Strings must be valid Unicode (JSON allows lone UTF-16 surrogates; they are refused).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Union

from .limits import RequestLimits

DEFAULT_GEN_LENGTH = 64
DEFAULT_BLOCK_LENGTH = 32
MAX_CFG_SCALE = 100.0        # larger scales overflow the guided logits (float16 at ~1000)
MAX_STOP_STRINGS = 16
MAX_STOP_TOKEN_IDS = 64

# OpenAI fields with no meaning here: refused unless they hold the neutral value.
_NEUTRAL = {"n": 1, "best_of": 1, "echo": False, "logprobs": None, "top_logprobs": None, "suffix": None,
            "presence_penalty": 0, "frequency_penalty": 0, "top_p": 1, "logit_bias": None, "tools": None}


@dataclass
class GenerationParams:
    prompts: List[Union[str, List[int]]]   # texts or token-id lists, one choice each
    options: dict                          # Engine.generate keyword arguments (seed of prompt 0)
    max_tokens: Optional[int]              # completion tokens at most (None: all gen_length)
    stop: List[str] = field(default_factory=list)   # the completion's text ends before the first of these
    stream: bool = False
    include_usage: bool = False            # stream_options.include_usage: a last chunk with usage
    timeout: Optional[float] = None
    infill: Optional[str] = None           # text with mask markers (the request fills them)
    mask_marker: Optional[str] = None

    def options_for(self, index: int) -> dict:
        """The engine options of prompt `index` (seed + index when a seed is given)."""
        opts = dict(self.options)
        if opts.get("seed") is not None:
            opts["seed"] = opts["seed"] + index
        return opts


def _get(body: dict, name: str, kinds, default=None, what: str = ""):
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in kinds:
        raise ValueError(f"'{name}' must be {what}, got {value!r}")
    if not isinstance(value, kinds):
        raise ValueError(f"'{name}' must be {what}, got {value!r}")
    return value


def _int(body, name, default=None, minimum: Optional[int] = None) -> Optional[int]:
    value = _get(body, name, (int,), default, "an integer")
    if value is not None and minimum is not None and value < minimum:
        raise ValueError(f"'{name}' must be at least {minimum}, got {value}")
    return value


def _float(body, name, default=None) -> Optional[float]:
    value = _get(body, name, (int, float), default, "a number")
    return None if value is None else float(value)


def _bool(body, name, default=False) -> bool:
    return _get(body, name, (bool,), default, "true or false")


def _str(body, name, default=None) -> Optional[str]:
    return _get(body, name, (str,), default, "a string")


def _check_neutral(body: dict):
    for name, neutral in _NEUTRAL.items():
        if name in body and body[name] is not None and body[name] != neutral:
            raise ValueError(f"'{name}' = {body[name]!r} is not supported (only {neutral!r})")


def _token_list(value, name: str) -> List[int]:
    if not isinstance(value, list) or not value or \
            not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise ValueError(f"'{name}' token lists must be non-empty lists of integers, got {_short(value)}")
    return list(value)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_unicode(body):
    """ValueError if any string of the parsed body (keys too) holds a lone UTF-16 surrogate,
    which JSON's \\ud800 escapes allow but no tokenizer or UTF-8 answer can carry."""
    todo = [body]
    while todo:
        value = todo.pop()
        if isinstance(value, dict):
            todo.extend(value.keys())
            todo.extend(value.values())
        elif isinstance(value, list):
            todo.extend(value)
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ValueError(f"the request holds a lone UTF-16 surrogate ({value[e.start]!a}); "
                                 "strings must be valid Unicode") from None


def completion_prompts(body: dict, limits: RequestLimits) -> List[Union[str, List[int]]]:
    """'prompt': a string, a list of strings, a list of token ids, or a list of such lists."""
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        limits.check("max_prompts_per_request", len(prompt), "the number of prompts")
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return list(prompt)
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            return [list(prompt)]
        if all(isinstance(p, list) for p in prompt):
            return [_token_list(p, "prompt") for p in prompt]
    raise ValueError("'prompt' must be a string, a list of strings, a list of token ids or a list of them")


def chat_messages(body: dict) -> List[dict]:
    """'messages': [{"role": str, "content": str or [{"type": "text", "text": str}, ...]}, ...]."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list of {\"role\", \"content\"} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ValueError(f"messages[{i}] must be an object with a string 'role'")
        content = m.get("content")
        if isinstance(content, list):   # content parts: only text ones
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise ValueError(f"messages[{i}].content: only parts of type 'text' are supported")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be a string or a list of text parts")
        out.append({"role": m["role"], "content": content})
    return out


def generation_params(body: dict, prompts: List[Union[str, List[int]]], limits: RequestLimits,
                      infill: bool = False) -> GenerationParams:
    """The shared fields of both endpoints. `prompts` are already extracted."""
    _check_neutral(body)
    max_tokens = _int(body, "max_tokens", minimum=1)
    if max_tokens is None:
        max_tokens = _int(body, "max_completion_tokens", minimum=1)
    gen_length = _int(body, "gen_length", minimum=1)
    length = gen_length if gen_length is not None else max_tokens
    if length is None:
        length = DEFAULT_GEN_LENGTH
    block_length = _int(body, "block_length", minimum=1)
    if not infill:
        if block_length is None:
            block_length = min(DEFAULT_BLOCK_LENGTH, length)
        if gen_length is None:
            gen_length = -(-length // block_length) * block_length   # rounded up to whole blocks
    options = dict(temperature=_float(body, "temperature", 0.0), remasking=_str(body, "remasking", "low_confidence"),
                   threshold=_float(body, "threshold"), seed=_int(body, "seed"), block_length=block_length,
                   steps=_int(body, "steps"))
    if not infill:
        options.update(gen_length=gen_length, cfg_scale=_float(body, "cfg_scale", 0.0), cache=_str(body, "cache"),
                       stop_at_eos=_bool(body, "stop_at_eos"))
        limits.check("max_gen_length", gen_length, "'gen_length'" if body.get("gen_length") is not None
                     else f"'gen_length' (max_tokens {max_tokens} rounded up to whole blocks)" if max_tokens
                     else "the default 'gen_length'")
        if options["steps"] is None:
            options["steps"] = gen_length
        limits.check("max_request_tokens", gen_length * len(prompts), "the answer tokens of all prompts")
        if not 0 <= options["cfg_scale"] <= MAX_CFG_SCALE:
            raise ValueError(f"'cfg_scale' must lie in [0, {MAX_CFG_SCALE:g}], got {options['cfg_scale']}")
        stop_ids = body.get("stop_token_ids")
        if stop_ids is not None:
            options["stop_token_ids"] = _token_list(stop_ids, "stop_token_ids") if stop_ids != [] else []
            if len(options["stop_token_ids"]) > MAX_STOP_TOKEN_IDS:
                raise ValueError(f"'stop_token_ids' holds {len(stop_ids)} ids; at most {MAX_STOP_TOKEN_IDS}")
        if options["cache"] not in (None, "prefix", "dual"):
            raise ValueError(f"'cache' must be \"prefix\", \"dual\" or null, got {options['cache']!r}")
    else:
        for name in ("gen_length", "cache", "cfg_scale", "stop", "stop_token_ids", "max_tokens"):
            if body.get(name) is not None:
                raise ValueError(f"'{name}' does not apply to an infill request")
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop
    if stops is None:
        stops = []
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise ValueError("'stop' must be a non-empty string or a list of them")
    if len(stops) > MAX_STOP_STRINGS:
        raise ValueError(f"'stop' holds {len(stops)} strings; at most {MAX_STOP_STRINGS}")
    if options["steps"] is not None:   # an infill without steps: one per mask, checked once they are counted
        limits.check("max_steps", options["steps"], "'steps'" if body.get("steps") is not None
                     else "'steps' (by default gen_length)")
    stream = _bool(body, "stream")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise ValueError("'stream_options' must be an object")
    timeout = _float(body, "timeout")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"'timeout' must be a positive number of seconds, got {timeout}")
    if stream and len(prompts) > 1:
        raise ValueError("streaming takes one prompt; send the others as separate requests")
    return GenerationParams(prompts, options, max_tokens, stops, stream, _bool(stream_options, "include_usage"),
                            timeout)


def completion_request(body: dict, limits: RequestLimits) -> GenerationParams:
    """/v1/completions: 'prompt', or 'infill' (a text with mask markers, filled in place)."""
    infill = body.get("infill")
    if infill is not None:
        if not isinstance(infill, str) or not infill:
            raise ValueError("'infill' must be a non-empty text with mask markers")
        if body.get("prompt") is not None:
            raise ValueError("give either 'prompt' or 'infill', not both")
        params = generation_params(body, [infill], limits, infill=True)
        params.infill, params.mask_marker = infill, _str(body, "mask_marker")
        if params.mask_marker == "":
            raise ValueError("'mask_marker' must be a non-empty string")
        return params
    return generation_params(body, completion_prompts(body, limits), limits)


class UnknownModelError(LookupError):
    """The request names a model this server does not serve (404)."""


def check_model(body: dict, served: str):
    model = body.get("model")
    if model is not None and model != served:
        raise UnknownModelError(f"model {model!r} is not served here; this server serves {served!r}")
