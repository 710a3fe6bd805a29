"""Text in, text out: `generate` (an answer, redrawn live on a terminal), `chat` (a conversation),
`infill` (the masks of a text filled)."""
from __future__ import annotations

import argparse
import sys
import time

from .live_view import LiveView, render_canvas
from .options import generation_args, generation_kwargs, load_engine, model_args, parallel_args


def add_parsers(sub):
    g = sub.add_parser("generate", help="generate an answer to a text prompt")
    g.add_argument("prompt", help="prompt text ('-' reads it from standard input)")
    model_args(g)
    parallel_args(g)
    generation_args(g)
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the checkpoint's chat template")
    g.add_argument("--live", action=argparse.BooleanOptionalAction, default=None,
                   help="redraw the canvas after every step (default: on when stdout is a terminal)")
    g.set_defaults(run=generate)
    c = sub.add_parser("chat", help="talk to a checkpoint with a chat template (one line per turn)")
    model_args(c)
    parallel_args(c)
    generation_args(c)
    c.set_defaults(run=chat)
    f = sub.add_parser("infill", help="fill the masked tokens of a text")
    f.add_argument("text", help="text with mask markers, one per token to fill ('-' reads standard input)")
    model_args(f)
    parallel_args(f)
    f.add_argument("--mask-marker", default=None, help="marker string (default: the tokenizer's mask token)")
    f.add_argument("--steps", type=int, default=None, help="denoising steps (default: one per mask)")
    f.add_argument("--block-length", type=int, default=None, help="masks per block (default: all in one)")
    f.add_argument("--temperature", type=float, default=0.0)
    f.add_argument("--remasking", default="low_confidence", choices=["low_confidence", "random"])
    f.add_argument("--threshold", type=float, default=None)
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(run=infill)


def _answer(eng, ids, mask, kwargs) -> str:
    start = time.perf_counter()
    out = eng.generate(ids, attention_mask=mask, **kwargs)
    seconds = time.perf_counter() - start
    print(f"[{kwargs['gen_length']} tokens, {out.nfe} steps, {seconds:.2f} s, "
          f"{kwargs['gen_length'] / seconds:.1f} tokens/s]", file=sys.stderr)
    return eng.codec.decode(out.answers[0, : int(out.answer_lengths[0])].tolist())


def generate(args) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    eng = load_engine(args)
    ids, _ = eng.encode_prompts([prompt], chat=args.chat)
    shown = "" if args.chat else prompt
    if args.live if args.live is not None else sys.stdout.isatty():
        return _generate_live(eng, ids, shown, generation_kwargs(args))
    print(shown + _answer(eng, ids, None, generation_kwargs(args)))
    return 0


def _generate_live(eng, ids, shown: str, kwargs) -> int:
    """Redraw the answer after every step: masked tokens as a shade, the rest decoded."""
    view, prompt_len, final = LiveView(sys.stdout, shown), ids.shape[1], ""
    start = time.perf_counter()
    for event in eng.stream(ids, every_step=True, **kwargs):
        if event.kind == "step":
            answer = event.tokens[0, prompt_len:].tolist()
            view.draw(render_canvas(eng.codec, answer, eng.cfg.mask_token_id), f"[block {event.block}, step {event.nfe}]")
        else:
            final = event.text[0]
            nfe = event.nfe
    view.finish(final)
    seconds = time.perf_counter() - start
    print(f"[{kwargs['gen_length']} tokens, {nfe} steps, {seconds:.2f} s]", file=sys.stderr)
    return 0


def infill(args) -> int:
    text = sys.stdin.read() if args.text == "-" else args.text
    eng = load_engine(args)
    print(eng.infill_text(text, mask_marker=args.mask_marker, steps=args.steps, block_length=args.block_length,
                          temperature=args.temperature, remasking=args.remasking, threshold=args.threshold,
                          seed=args.seed))
    return 0


def chat(args) -> int:
    eng = load_engine(args)
    codec = eng.codec
    if not codec.chat_template:
        raise ValueError(f"{args.model} has no chat template; use `illada-rt generate` instead")
    messages = []
    interactive = sys.stdin.isatty()
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:
            return 0
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line.strip()})
        ids = codec.encode(codec.render_chat(messages), add_special_tokens=False)
        answer = _answer(eng, [ids], None, generation_kwargs(args)).strip()
        messages.append({"role": "assistant", "content": answer})
        print(("model> " if interactive else "") + answer, flush=True)
