"""The model_args of the lm-evaluation-harness model "illada_rt" (lm_eval.py): one dataclass whose
fields are the keys, with their types and defaults, checked before a checkpoint loads.

    settings = EvalSettings.parse({"pretrained": DIR, "steps": "64", "cache": "prefix"})
    settings.check(ModelConfig.from_dir(DIR))       # every generation and estimate rule, on a dry plan
    settings.generation_options(max_gen_toks=100)   # Engine.generate's keyword arguments

Values may come as the harness parses them from "k=v,..." strings (ints, floats, booleans, None)
or as strings ("32", "true", "none"); anything else of the wrong type, an unknown key, or a
combination the engine refuses raises ModelArgsError naming the argument.

The length rule: a request's max_gen_toks (gen_length when it gives none) is rounded up to whole
blocks of block_length; the answer is cut back to max_gen_toks tokens after decoding. Every block
gets steps * block_length / gen_length denoising steps (steps=None: one token per step), so
gen_length, block_length and steps set the rate and a longer request gets proportionally more steps.
"""
from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import torch

from ..config import ModelConfig
from ..decoding.likelihood import check_estimate
from ..decoding.plan import plan_generation


class ModelArgsError(ValueError):
    """A model_args key that is unknown, of the wrong type, or refused by the engine."""


def _doc(text: str):
    return {"doc": text}


@dataclass(frozen=True)
class EvalSettings:
    pretrained: Optional[str] = field(default=None, metadata=_doc("checkpoint directory (required)"))
    device: Optional[str] = field(default=None, metadata=_doc('"cpu" or "cuda[:N]"; None: cuda if available'))
    dtype: Optional[str] = field(default=None, metadata=_doc("float32, bfloat16, float16; None: bfloat16 on "
                                                              "CUDA, float32 on the CPU"))
    quantization: Optional[str] = field(default=None, metadata=_doc("int8, int4, fp8 (quantize while loading)"))
    group_size: int = field(default=128, metadata=_doc("int4 inputs per scale"))
    quantize_head: bool = field(default=False, metadata=_doc("quantize the LM head too"))
    kernels: Optional[str] = field(default=None, metadata=_doc("auto, custom, torch, or per family with ';' "
                                                                "(attention=torch;remask=custom)"))
    cuda_graphs: bool = field(default=True, metadata=_doc("replay captured CUDA graphs in generate"))
    gen_length: int = field(default=128, metadata=_doc("answer tokens when a request gives no max_gen_toks"))
    block_length: int = field(default=32, metadata=_doc("tokens per block"))
    steps: Optional[int] = field(default=None, metadata=_doc("denoising steps for gen_length tokens (None: "
                                                              "gen_length)"))
    threshold: Optional[float] = field(default=None, metadata=_doc("confidence-threshold parallel decoding"))
    cache: Optional[str] = field(default=None, metadata=_doc("None (exact), prefix or dual block KV cache"))
    cfg_scale: float = field(default=0.0, metadata=_doc("classifier-free guidance (generation and likelihood)"))
    remasking: str = field(default="low_confidence", metadata=_doc("low_confidence or random"))
    temperature: float = field(default=0.0, metadata=_doc("Gumbel sampling temperature (0: greedy)"))
    mc_num: int = field(default=128, metadata=_doc("Monte-Carlo samples per log-likelihood"))
    batch_size: int = field(default=32, metadata=_doc("rows per forward: Monte-Carlo copies, generation requests"))
    seed: int = field(default=0, metadata=_doc("every estimate uses seed; generation request j seed + j"))
    chat: bool = field(default=False, metadata=_doc("wrap each context in the checkpoint's chat template"))
    check_greedy: bool = field(default=True, metadata=_doc("compute is_greedy (False: always False)"))

    # ------------------------------------------------------------------ parsing

    @classmethod
    def parse(cls, raw: Mapping[str, Any], require_pretrained: bool = True) -> "EvalSettings":
        """Checked settings from model_args (see the module docstring); defaults filled in."""
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in raw if k not in names]
        if unknown:
            hint = HARNESS_KEYS.get(unknown[0], "")
            raise ModelArgsError(f"illada_rt model_args: unknown key {unknown[0]!r}{hint}; "
                                 f"known keys: {', '.join(names)}")
        values = {k: _coerce(k, v, hints[k]) for k, v in raw.items()}
        if require_pretrained and not values.get("pretrained"):
            raise ModelArgsError("illada_rt model_args: pretrained=DIR (the checkpoint directory) is required")
        device = values.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        values["device"] = device
        values.setdefault("dtype", None)
        if values["dtype"] is None:
            values["dtype"] = "bfloat16" if device.startswith("cuda") else "float32"
        if values.get("kernels"):
            values["kernels"] = values["kernels"].replace(";", ",")   # "," separates model_args
        if values.get("steps") is None:
            values["steps"] = values.get("gen_length", cls.gen_length)
        return cls(**values)

    def check(self, cfg: ModelConfig) -> None:
        """Every rule the engine applies to these settings (on a dry generation plan and the
        estimate's checks), before anything loads; ModelArgsError naming the argument."""
        try:
            check_estimate(self.mc_num, self.batch_size, self.cfg_scale)
            dummy = torch.zeros(1, 1, dtype=torch.int64) + (1 if cfg.mask_token_id == 0 else 0)
            exact = dict(self.generation_options(self.gen_length), gen_length=self.gen_length, steps=self.steps)
            plan_generation(cfg, torch.device("cpu"), dummy, None, **exact)
        except ValueError as e:
            raise ModelArgsError(f"illada_rt model_args: {e}") from None
        if not 0 <= self.seed < 2 ** 62 - 2 ** 32:
            raise ModelArgsError(f"illada_rt model_args: seed must lie in [0, 2**62 - 2**32), got {self.seed}")

    # ------------------------------------------------------------------ generation

    @property
    def steps_per_block(self) -> int:
        return self.steps * self.block_length // self.gen_length   # whole: check() holds it so

    def answer_length(self, max_gen_toks: int) -> int:
        """max_gen_toks rounded up to whole blocks."""
        return -(-max_gen_toks // self.block_length) * self.block_length

    def generation_options(self, max_gen_toks: int) -> dict:
        """Engine.generate's keyword arguments for an answer of max_gen_toks tokens (before the cut);
        stop_at_eos: the answer ends at EOS (what follows is never decoded), so later blocks are skipped."""
        gen_length = self.answer_length(max_gen_toks)
        return dict(gen_length=gen_length, block_length=self.block_length,
                    steps=gen_length // self.block_length * self.steps_per_block,
                    temperature=self.temperature, cfg_scale=self.cfg_scale, remasking=self.remasking,
                    threshold=self.threshold, cache=self.cache, stop_at_eos=True)


# keys the harness knows for other models, and why illada_rt has none
HARNESS_KEYS = {
    "max_batch_size": " (illada_rt takes a fixed batch_size; batch_size=auto is not supported)",
    "tokenizer": " (the checkpoint's own tokenizer.json is used)",
    "trust_remote_code": " (checkpoints load without remote code)",
    "model_path": " (use pretrained=DIR)",
    "cfg": " (use cfg_scale)",
    "is_check_greedy": " (use check_greedy)",
}

KIND_WORDS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _coerce(name: str, value: Any, hint) -> Any:
    """value as the field's type: int, float, bool or str, or None where the field is Optional."""
    optional = type(None) in typing.get_args(hint)
    kind = next(t for t in typing.get_args(hint) if t is not type(None)) if optional else hint
    if optional and (value is None or (isinstance(value, str) and value.strip().lower() == "none")):
        return None
    if isinstance(value, str) and kind is not str:
        text = value.strip()
        if kind is bool and text.lower() in ("true", "false"):
            return text.lower() == "true"
        if kind is int and re.fullmatch(r"[+-]?\d+", text):
            return int(text)
        if kind is float:
            try:
                return float(text)
            except ValueError:
                pass
    elif kind is bool and isinstance(value, bool):
        return value
    elif kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif kind is str and isinstance(value, str):
        return value
    extra = " or none" if optional else ""
    raise ModelArgsError(f"illada_rt model_args: {name} must be {KIND_WORDS[kind]}{extra}, "
                         f"got {value!r} ({type(value).__name__})")

