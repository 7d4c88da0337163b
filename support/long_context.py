"""Peak memory of long prompts through both notebooks' own code (issue 17, item 2).

    python -m support.long_context --lengths 4096 16384 32768

For each length, each in a fresh process so that each peak is its own, with the real weights (the
offline conversion) in bfloat16 under torch.no_grad():

- notebook 2: `model.setup_cache(n)`, then `model.prefill(ids)` (queries against the cache, 512 at a time)
- notebook 1: `model(ids, last_token_only=True)` (no cache, queries 512 at a time)

The prompt is BOS followed by notebook 1's lab passage, repeated until it is n tokens long; it is
tokenized once by this (parent) process, so the tokenizer's memory counts in no peak. Reported: the
process's RSS after loading the model (before the call), its peak RSS during the call (psutil,
sampled every 10 ms by support/benchmark.py's PeakRSS), the call's wall time, and the machine.

Before the long runs, at one length where both fit quickly (--check-length, default 1,100 tokens:
past the 512-token window and two 512-query chunk boundaries), notebook 2's prefill and notebook 1's
forward are compared in float32: the largest difference between their last-position logits.
Run it from the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time

from support.benchmark import ROOT, PeakRSS, machine_description

NOTEBOOKS = {"kv-cache": "notebook 2: setup_cache + prefill", "regular": "notebook 1: forward, last_token_only"}


# ---------------------------------------------------------------- in the child process
def prompt(length: int):
    """(1, length) ids: BOS, then the lab passage's ids (from the parent) repeated."""
    import torch

    passage = [int(i) for i in os.environ["LONG_CONTEXT_PASSAGE_IDS"].split(",")]
    bos = int(os.environ["LONG_CONTEXT_BOS_ID"])
    body = passage * (length // len(passage) + 1)
    return torch.tensor([[bos] + body[: length - 1]])


def load(which: str, dtype):
    from gemma3_weights import prepare_weights
    from support.notebook_import import NOTEBOOK_1, NOTEBOOK_2, import_notebook, notebook_model

    nb = import_notebook(NOTEBOOK_2 if which == "kv-cache" else NOTEBOOK_1)
    return notebook_model(nb, dtype, prepare_weights("offline").folder)


def last_logits(model, which: str, ids):
    """The last position's logits (1, 1, v), the notebook's own way."""
    if which == "kv-cache":
        model.setup_cache(ids.shape[1])
        return model.prefill(ids)
    return model(ids, last_token_only=True)


def run_length(which: str, length: int, dtype_name: str) -> dict:
    import psutil
    import torch

    PeakRSS.start()
    torch.manual_seed(0)
    ids = prompt(length)
    with torch.no_grad():
        model = load(which, getattr(torch, dtype_name))
        load_peak = PeakRSS.peak
        process = psutil.Process()
        # The sampler keeps the largest RSS it has seen: restart it from now, so the peak is the call's own.
        PeakRSS.peak = 0
        time.sleep(0.05)
        PeakRSS.peak = 0
        before = process.memory_info().rss
        start = time.perf_counter()
        report_progress(model, start)
        logits = last_logits(model, which, ids)
        seconds = time.perf_counter() - start
        time.sleep(0.03)  # one more sample after the call
    assert logits.shape == (1, 1, model.cfg["vocab_size"]), logits.shape
    assert torch.isfinite(logits).all(), "non-finite logits"
    return {"notebook": which, "length": length, "dtype": dtype_name, "rss_before": before,
            "peak_rss": max(PeakRSS.peak, before), "load_peak_rss": load_peak, "seconds": seconds,
            "argmax": int(logits[0, -1].argmax()), "machine": machine()}


def report_progress(model, start: float, every: float = 60):
    """To stderr every `every` seconds: the layer being run and the peak RSS so far (a run stopped early says
    how far it got)."""
    layer = [0]
    for index, block in enumerate(model.blocks):
        block.register_forward_pre_hook(lambda module, inputs, index=index: layer.__setitem__(0, index + 1))

    def tick():
        while True:
            time.sleep(every)
            print(f"progress: {time.perf_counter() - start:.0f} s, in layer {layer[0]} of {len(model.blocks)}, "
                  f"peak RSS so far {gib(PeakRSS.peak)}", file=sys.stderr, flush=True)

    threading.Thread(target=tick, name="progress", daemon=True).start()


def run_check(length: int) -> dict:
    """Notebook 2's prefill against notebook 1's forward, float32, the same ids: last-position logits."""
    import torch

    ids = prompt(length)
    logits = {}
    with torch.no_grad():
        for which in NOTEBOOKS:
            model = load(which, torch.float32)
            logits[which] = last_logits(model, which, ids)[0, -1]
            del model
    cached, uncached = logits["kv-cache"], logits["regular"]
    return {"length": length, "max_abs_diff": float((cached - uncached).abs().max()),
            "max_abs_logit": float(uncached.abs().max()),
            "same_argmax": bool(cached.argmax() == uncached.argmax())}


def machine() -> str:
    """CPU model, torch threads and CPU capability (support/benchmark.py's line), and platform's names."""
    return f"{machine_description('cpu')}; platform.processor {platform.processor()!r}, machine {platform.machine()}"


# ---------------------------------------------------------------- the parent
def passage_ids() -> tuple[list[int], int]:
    """Notebook 1's lab passage, tokenized without BOS, and the BOS id."""
    from gemma3_weights import prepare_weights
    from support.notebook_import import NOTEBOOK_1, import_notebook

    nb = import_notebook(NOTEBOOK_1)
    tokenizer = nb.Gemma3Tokenizer(prepare_weights("offline").folder / "tokenizer.json")
    return tokenizer.encode(nb.LAB_PASSAGE, add_bos=False), tokenizer.bos_id


def child(arguments: list[str], env: dict, timeout: float, what: str) -> dict | None:
    """This module in a fresh process; its RESULT line as a dict, or None (said why)."""
    try:
        done = subprocess.run([sys.executable, "-m", "support.long_context", *arguments], capture_output=True,
                              encoding="utf-8", errors="replace", timeout=timeout, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        print(f"{what}: stopped after {timeout:.0f} s (raise --timeout)", flush=True)
        return None
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        killed = done.returncode in (-9, 137)
        print(f"{what}: FAILED, exit status {done.returncode}"
              + (" (killed: SIGKILL, most likely out of memory)" if killed else "")
              + f"\n{done.stderr[-2000:]}", flush=True)
        return None
    return json.loads(lines[-1][len("RESULT "):])


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 32768])
    parser.add_argument("--notebooks", nargs="+", choices=list(NOTEBOOKS), default=list(NOTEBOOKS))
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--check-length", type=int, default=1100,
                        help="float32 cached-vs-uncached logits check at this length (0: skip)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one run may take (default: 3600)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--child", nargs=3, metavar=("NOTEBOOK", "LENGTH", "DTYPE"), help=argparse.SUPPRESS)
    parser.add_argument("--child-check", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        print("RESULT " + json.dumps(run_length(args.child[0], int(args.child[1]), args.child[2])), flush=True)
        return
    if args.child_check:
        print("RESULT " + json.dumps(run_check(args.child_check)), flush=True)
        return

    ids, bos = passage_ids()
    env = os.environ | {"LONG_CONTEXT_PASSAGE_IDS": ",".join(map(str, ids)), "LONG_CONTEXT_BOS_ID": str(bos),
                        "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONIOENCODING": "utf-8"}
    print(f"prompt: BOS + notebook 1's lab passage ({len(ids)} tokens) repeated", flush=True)

    check = None
    if args.check_length:
        check = child(["--child-check", str(args.check_length)], env, args.timeout, "float32 check")
        if check:
            print(f"float32, {check['length']} tokens: notebook 2 prefill vs notebook 1 forward, last-position "
                  f"logits: max abs diff {check['max_abs_diff']:.3g} (largest |logit| {check['max_abs_logit']:.1f}),"
                  f" same argmax: {check['same_argmax']}", flush=True)

    results = []
    for length in sorted(args.lengths):
        for which in args.notebooks:
            result = child(["--child", which, str(length), args.dtype], env, args.timeout, f"{which} at {length}")
            if result:
                results.append(result)
                print(f"{length:>6} {which:<9} peak {gib(result['peak_rss'])}, before {gib(result['rss_before'])}, "
                      f"{result['seconds']:.1f} s", flush=True)

    if results:
        print(f"\nMachine: {results[0]['machine']}")
        print(f"\n| tokens | notebook ({args.dtype}) | peak RSS | RSS before the call | peak - before | seconds |")
        print("|---:|---|---:|---:|---:|---:|")
        for r in results:
            print(f"| {r['length']:,} | {NOTEBOOKS[r['notebook']]} | {gib(r['peak_rss'])} | {gib(r['rss_before'])} "
                  f"| {gib(r['peak_rss'] - r['rss_before'])} | {r['seconds']:.1f} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"check": check, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
