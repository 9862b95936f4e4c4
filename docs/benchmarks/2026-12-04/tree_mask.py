"""Where the tree pass's extra cost per token comes from (docs/benchmarks.md, 2026-12-04).

One process, the default model, float32, 1 thread: a 242-token prefix (the
median conversation's) and a 480-token extension (its tree's size) run as the
tail of one causal pass, as a causal extension of the prefix's cache, and as
a tree pass (the engine's 4D mask, bool and additive float), each the median
of 7. Random token ids: the cost of a pass does not depend on them. Usage:

    .venv/bin/python docs/benchmarks/2026-12-04/tree_mask.py
"""
import os
import statistics
import time

import torch
from transformers import AutoModelForCausalLM, DynamicCache

from mtserve.config import load_settings
from mtserve.models import resolve_model_path

torch.set_num_threads(1)
m = AutoModelForCausalLM.from_pretrained(resolve_model_path(None, load_settings().checkpoints_root), dtype=torch.float32).eval()
P, N = 242, 480
ids = torch.randint(100, 5000, (1, P + N))
def t(f, reps=7):
    xs=[]
    for _ in range(reps):
        s=time.perf_counter(); f(); xs.append(time.perf_counter()-s)
    return statistics.median(xs)
with torch.inference_mode():
    def full():  # one causal pass over prefix + N
        m(input_ids=ids, use_cache=False, logits_to_keep=1)
    def prefix_only():
        m(input_ids=ids[:, :P], use_cache=False, logits_to_keep=1)
    c = DynamicCache(config=m.config); m(input_ids=ids[:, :P], cache=c, use_cache=True, logits_to_keep=1)
    from mtserve.engine import _rows_view
    causal = torch.ones(N, N, dtype=torch.bool).tril()
    mask = torch.zeros(1, 1, N, P + N, dtype=torch.bool); mask[0,0,:,:P] = True; mask[0,0,:,P:] = causal
    pos = torch.arange(P, P+N)[None]
    def tree_bool():
        m(input_ids=ids[:, P:], attention_mask=mask, position_ids=pos, cache=_rows_view(c, torch.tensor([0])), use_cache=True, logits_to_keep=1)
    fmask = torch.zeros(1,1,N,P+N); fmask.masked_fill_(~mask, torch.finfo(torch.float32).min)
    def tree_float():
        m(input_ids=ids[:, P:], attention_mask=fmask, position_ids=pos, cache=_rows_view(c, torch.tensor([0])), use_cache=True, logits_to_keep=1)
    def ext_causal():  # the same tokens with a 2D mask: the causal path
        m(input_ids=ids[:, P:], attention_mask=torch.ones(1, P+N, dtype=torch.long), position_ids=pos, cache=_rows_view(c, torch.tensor([0])), use_cache=True, logits_to_keep=1)
    for f in (full, prefix_only, ext_causal, tree_bool, tree_float): f()
    r = {f.__name__: t(f) for f in (full, prefix_only, ext_causal, tree_bool, tree_float, full, ext_causal, tree_bool)}
    print({k: round(v,3) for k,v in r.items()}, "load average", os.getloadavg())
    print("N-token part: causal via full", round(r["full"]-r["prefix_only"],3), "ext causal", round(r["ext_causal"],3), "tree bool", round(r["tree_bool"],3), "tree float", round(r["tree_float"],3))
