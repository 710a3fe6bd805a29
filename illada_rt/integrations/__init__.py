"""Bridges from illada_rt to other tools. Each needs its tool (an optional extra) and is imported
only when asked for: `import illada_rt` imports none of them.

    lm_eval.py       the lm-evaluation-harness model "illada_rt" (pip install "illada_rt[eval]")
    lm_eval_args.py  its model_args: names, types, defaults, checks (needs no harness)
"""
