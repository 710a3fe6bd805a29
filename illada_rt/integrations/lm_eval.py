"""The lm-evaluation-harness model "illada_rt": benchmark accuracy through the engine, scored the
way the LLaDA authors score (their eval_llada.py): log-likelihoods by LLaDA's Monte-Carlo
estimate, answers by generate() cut at the task's stop strings.

    import illada_rt.integrations.lm_eval       # registers "illada_rt" with the harness
    lm_eval.simple_evaluate(model="illada_rt", model_args="pretrained=DIR,device=cuda,steps=256", tasks=["gsm8k"])
    run_tasks(DIR, ["gsm8k"], model_args="threshold=0.9", limit=100)    # what `illada-rt eval` runs
    python -m illada_rt.integrations.lm_eval --model illada_rt --model_args pretrained=DIR ...   # the harness's CLI

model_args: lm_eval_args.EvalSettings. Requests (Instance.args):

- loglikelihood (context, continuation) -> (log p, is_greedy). Encoded as the harness encodes for
  causal LMs: trailing spaces of the context move to the continuation, whose tokens are those of
  context + continuation after the context's; an empty context becomes the EOS token (the harness's
  prefix convention). log p = Engine.log_likelihood(mc_num, batch_size copies per forward,
  cfg_scale, seed): every request draws its masks from the same seed, so the options of a question
  share their random numbers. A one-token continuation takes one draw (mc_num=1): every copy would
  mask that token with weight 1, so the estimate is exact and the same (MMLU's " A" costs a forward).
  is_greedy, as eval_llada.py's suffix_greedy_prediction: greedy decoding of len(continuation)
  masks after the context, one token per step, the most confident kept (Engine.generate with
  gen_length = block_length = steps = that length, temperature 0, cfg_scale), yields the
  continuation. check_greedy=false returns False without computing it.
- generate_until (context, {"until", "max_gen_toks", ...}) -> text. Runs of consecutive requests
  with the same answer length share a left-padded batch of up to batch_size rows; request j of the
  call draws its noise with seed + j. Lengths and steps: lm_eval_args.py. The answer ends at EOS,
  is cut to max_gen_toks tokens, decoded with its special tokens, cut before the first `until`
  string, then stripped of special tokens (as eval_llada.py). model_args set the sampling: a task's
  do_sample, temperature, top_p, ... are not used (one warning per key that asks for other sampling).
- loglikelihood_rolling (perplexity tasks): NotImplementedError, as in eval_llada.py.

Chat: chat=true renders each context as one user turn of the checkpoint's chat template; the
harness's own apply_chat_template (multi-turn few-shot) works too, but not both at once.
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch

from ..config import ModelConfig
from ..decoding.padding import left_pad, pad_id
from ..engine import Engine
from ..text import TextCodec
from .lm_eval_args import EvalSettings, ModelArgsError

MISSING_EXTRA = 'the lm-evaluation-harness integration needs lm-eval: pip install "illada_rt[eval]"'

try:
    # The harness imports lm_eval.models (which registers its own models) only while its registry
    # is empty: import it first, or registering "illada_rt" would hide "hf", "vllm", ...
    import lm_eval.models  # noqa: F401
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
    from tqdm import tqdm
except ImportError as e:
    raise ImportError(f"{MISSING_EXTRA} ({e})") from e

LOADING_KEYS = ("pretrained", "device", "dtype", "quantization", "group_size", "quantize_head", "kernels",
                "cuda_graphs")


class GenRequest(NamedTuple):
    context: str
    until: List[str]
    max_gen_toks: int


@register_model("illada_rt")
class IlladaLM(LM):
    def __init__(self, **model_args):
        super().__init__()
        settings = EvalSettings.parse(model_args)
        settings.check(ModelConfig.from_dir(settings.pretrained))     # before the weights load
        _check_chat(settings, TextCodec(settings.pretrained))
        engine = Engine.from_pretrained(settings.pretrained, device=settings.device, dtype=settings.dtype,
                                        quantization=settings.quantization, quantize_head=settings.quantize_head,
                                        group_size=settings.group_size, use_cuda_graphs=settings.cuda_graphs,
                                        kernels=settings.kernels)
        self._attach(engine, settings)

    @classmethod
    def from_engine(cls, engine: Engine, **model_args) -> "IlladaLM":
        """The model over an engine already loaded: model_args without the loading keys."""
        loading = [k for k in LOADING_KEYS if k in model_args]
        if loading:
            raise ModelArgsError(f"illada_rt model_args: {', '.join(loading)} apply when loading; "
                                 "from_engine takes a loaded engine")
        settings = EvalSettings.parse(model_args, require_pretrained=False)
        dtype = str(engine.model.dtype).replace("torch.", "")
        settings = dataclasses.replace(settings, pretrained=engine.model_dir, device=str(engine.device), dtype=dtype)
        settings.check(engine.cfg)
        lm = cls.__new__(cls)
        LM.__init__(lm)
        lm._attach(engine, settings)
        return lm

    def _attach(self, engine: Engine, settings: EvalSettings) -> None:
        self.engine, self.settings = engine, settings
        self.codec = engine.codec
        _check_chat(settings, self.codec)
        self._device = engine.device
        self._harness_chat = False    # contexts come rendered by the harness's apply_chat_template
        self._ignored: set = set()    # generation keys already warned about

    # ------------------------------------------------------------------ text -> tokens

    def _prompt_text(self, context: str) -> str:
        if self.settings.chat:
            return self.codec.render_chat([{"role": "user", "content": context}])
        return context

    def _encode(self, text: str) -> List[int]:
        # a text rendered by a chat template carries its own special tokens
        return self.codec.encode(text, add_special_tokens=not (self.settings.chat or self._harness_chat))

    def _prefix(self) -> List[int]:
        eos = self.engine.cfg.eos_token_id
        if eos is None:
            raise ValueError("an empty context needs a prefix token, and the config has no eos_token_id")
        return [eos]

    def encode_context(self, context: str) -> List[int]:
        """A generation prompt's token ids (chat template applied when asked)."""
        return self._encode(self._prompt_text(context)) or self._prefix()

    def encode_pair(self, context: str, continuation: str) -> Tuple[List[int], List[int]]:
        """(prompt ids, continuation ids) of a loglikelihood request (see the module docstring)."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        prompt_text = self._prompt_text(context)
        prompt = self._encode(prompt_text)
        answer = self._encode(prompt_text + continuation)[len(prompt):]
        return prompt or self._prefix(), answer

    def answer_text(self, ids: Sequence[int], until: Sequence[str]) -> str:
        """Answer tokens -> text before the first `until` string, special tokens dropped."""
        text = self.codec.tokenizer.decode(list(ids), skip_special_tokens=False)
        cuts = [text.find(stop) for stop in until if stop and stop in text]
        if cuts:
            text = text[:min(cuts)]
        return self.codec.decode(self.codec.encode(text, add_special_tokens=False))

    # ------------------------------------------------------------------ the harness's requests

    def loglikelihood(self, requests) -> List[Tuple[float, bool]]:
        s, out = self.settings, []
        for i, request in enumerate(tqdm(requests, desc="illada_rt loglikelihood", unit="req")):
            context, continuation = request.args
            prompt, answer = self.encode_pair(context, continuation)
            if not answer:
                raise ValueError(f"loglikelihood request {i}: the continuation {continuation!r} encodes to no tokens")
            # one token: every copy masks it (k = 1, weight 1), the estimate is exact after one draw
            mc_num, batch_size = (1, 1) if len(answer) == 1 else (s.mc_num, s.batch_size)
            logp = self.engine.log_likelihood(prompt, answer, mc_num=mc_num, batch_size=batch_size,
                                              cfg_scale=s.cfg_scale, seed=s.seed)
            result = (logp, self.is_greedy(prompt, answer) if s.check_greedy else False)
            self.cache_hook.add_partial("loglikelihood", request.args, result)
            out.append(result)
        return out

    def is_greedy(self, prompt: Sequence[int], answer: Sequence[int]) -> bool:
        """Whether greedy decoding of len(answer) masks, one token per step, yields answer."""
        n = len(answer)
        out = self.engine.generate(torch.tensor([list(prompt)]), gen_length=n, block_length=n, steps=n,
                                   temperature=0.0, cfg_scale=self.settings.cfg_scale, seed=self.settings.seed)
        return out.answers[0].tolist() == list(answer)

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError("illada_rt: loglikelihood_rolling (perplexity tasks such as wikitext) is not "
                                  "supported: a masked-diffusion LM has no left-to-right token probabilities "
                                  "(LLaDA's eval_llada.py refuses it too); use loglikelihood or generate_until tasks")

    def generate_until(self, requests) -> List[str]:
        s = self.settings
        parsed = [self._generation_request(i, request.args) for i, request in enumerate(requests)]
        texts: List[str] = []
        with tqdm(total=len(parsed), desc="illada_rt generate_until", unit="req") as bar:
            for first, end in self._batches(parsed):
                batch = parsed[first:end]
                ids, mask = left_pad([self.encode_context(r.context) for r in batch], pad_id(self.engine.cfg))
                out = self.engine.generate(ids, attention_mask=None if bool(mask.all()) else mask.to(torch.int64),
                                           seed=s.seed + first, **s.generation_options(batch[0].max_gen_toks))
                for row, r in enumerate(batch):
                    n = min(int(out.answer_lengths[row]), r.max_gen_toks)
                    texts.append(self.answer_text(out.answers[row, :n].tolist(), r.until))
                bar.update(len(batch))
        for request, text in zip(requests, texts):
            self.cache_hook.add_partial("generate_until", request.args, text)
        return texts

    def _batches(self, parsed: List[GenRequest]):
        """[first, end) runs of consecutive requests with the same answer length, at most batch_size long."""
        first = 0
        for i in range(1, len(parsed) + 1):
            if (i == len(parsed) or i - first == self.settings.batch_size
                    or self.settings.answer_length(parsed[i].max_gen_toks)
                    != self.settings.answer_length(parsed[first].max_gen_toks)):
                yield first, i
                first = i

    def _generation_request(self, i: int, args) -> GenRequest:
        context, kwargs = args
        kwargs = dict(kwargs or {})
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_toks = kwargs.pop("max_gen_toks", self.settings.gen_length)
        if not isinstance(max_toks, int) or isinstance(max_toks, bool) or max_toks <= 0:
            raise ValueError(f"generate_until request {i}: max_gen_toks must be a positive integer, got {max_toks!r}")
        self._warn_ignored(kwargs)
        return GenRequest(context, until, max_toks)

    def _warn_ignored(self, kwargs: Dict) -> None:
        """One warning per task generation key that asks for sampling other than model_args'."""
        sampling = self.settings.temperature > 0
        for key, value in kwargs.items():
            if key in self._ignored:
                continue
            if key == "do_sample" and bool(value) == sampling:
                continue
            if key == "temperature" and isinstance(value, (int, float)) and float(value) == self.settings.temperature:
                continue
            self._ignored.add(key)
            s = self.settings
            warnings.warn(f"illada_rt: generate_until does not use the task's {key}={value!r}; model_args set "
                          f"the sampling (temperature={s.temperature}, remasking={s.remasking})")

    # ------------------------------------------------------------------ chat templates (the harness's)

    @property
    def tokenizer_name(self) -> str:
        return os.path.abspath(self.engine.model_dir) if self.engine.model_dir else "illada_rt"

    def chat_template(self, chat_template: Union[bool, str] = False) -> str:
        if chat_template:
            self._use_harness_chat()
        return self.codec.chat_template or ""

    def apply_chat_template(self, chat_history: List[Dict[str, str]], add_generation_prompt: bool = True) -> str:
        self._use_harness_chat()
        return self.codec.render_chat(list(chat_history), add_generation_prompt=add_generation_prompt)

    def _use_harness_chat(self) -> None:
        if self.settings.chat:
            raise ModelArgsError("illada_rt: model_args chat=true and the harness's apply_chat_template would both "
                                 "apply the chat template; use one of them")
        _check_chat(dataclasses.replace(self.settings, chat=True), self.codec)
        self._harness_chat = True


def _check_chat(settings: EvalSettings, codec: TextCodec) -> None:
    if settings.chat and not codec.chat_template:
        raise ModelArgsError(f"illada_rt model_args: chat=true, but {settings.pretrained} has no chat_template "
                             "in its tokenizer_config.json")


def task_manager(tasks: Sequence[str], include_path: Optional[Union[str, List[str]]] = None, metadata=None):
    """The harness's TaskManager; its index of built-in tasks (seconds to build) is read only
    when a task is not found under include_path."""
    from lm_eval.tasks import TaskManager

    if include_path:
        local = TaskManager(include_path=include_path, include_defaults=False, metadata=metadata)
        if all(t in local.all_tasks for t in tasks):
            return local
    return TaskManager(include_path=include_path, metadata=metadata)


def run_tasks(model_dir: str, tasks: Sequence[str], model_args: Union[str, Dict, None] = None,
              limit: Optional[float] = None, num_fewshot: Optional[int] = None,
              include_path: Optional[Union[str, List[str]]] = None, log_samples: bool = False,
              gen_kwargs: Optional[str] = None, confirm_run_unsafe_code: bool = False) -> Dict:
    """lm_eval.simple_evaluate of model "illada_rt" on model_dir; returns the harness's results dict.
    model_args: "k=v,..." or a dict (EvalSettings keys, without pretrained). gen_kwargs: "k=v,..."
    over every task's generation_kwargs (max_gen_toks=512). confirm_run_unsafe_code: let tasks that
    execute the generated code run (HumanEval, MBPP)."""
    from lm_eval import simple_evaluate
    from lm_eval.utils import simple_parse_args_string

    args = simple_parse_args_string(model_args) if isinstance(model_args, str) or model_args is None \
        else dict(model_args)
    if "pretrained" in args:
        raise ModelArgsError("illada_rt: the checkpoint is model_dir (--model); leave pretrained out of model_args")
    args["pretrained"] = os.fspath(model_dir)
    tasks = list(tasks)
    return simple_evaluate(model="illada_rt", model_args=args, tasks=tasks, limit=limit, num_fewshot=num_fewshot,
                           task_manager=task_manager(tasks, include_path, metadata=dict(args)),
                           gen_kwargs=gen_kwargs or None, log_samples=log_samples,
                           confirm_run_unsafe_code=confirm_run_unsafe_code)


__all__ = ["IlladaLM", "EvalSettings", "ModelArgsError", "run_tasks", "task_manager", "MISSING_EXTRA"]


if __name__ == "__main__":   # python -m illada_rt.integrations.lm_eval --model illada_rt ...: the harness's CLI
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
