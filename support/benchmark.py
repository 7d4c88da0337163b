"""Decode speed and memory of the notebooks' models against Hugging Face transformers.

    python -m support.benchmark                        # the full table (about 10 minutes on a 2-core CPU)
    python -m support.benchmark --dtypes bfloat16 --no-compile --new-tokens 30   # a quick look

Every mode generates the same greedy tokens from the same prompt with the same weights (the
offline GGUF conversion), each in a fresh process so that peak memory is its own:

- regular:             notebook 1, no cache; every step runs the whole sequence, head on the last position
- regular, full head:  the same, with the output head applied to every position (what not to do)
- regular compiled:    notebook 1's model under torch.compile (dynamic shapes, inductor's defaults)
- KV cache:            notebook 2, static cache, eager
- KV cache compiled:   notebook 2's compile_decode, called as the notebook calls it
- KV cache int8:       the int8 notebook: load_quantized reads the file straight into int8 weights
                       (blocks and the tied head), eager and compiled
- transformers:        Gemma3ForCausalLM.generate, greedy, its default cache: the baseline

Decode tokens/s excludes the prompt (reported separately as time to first token). Peak memory is
the process's peak RSS on CPU (weights loading included, the tokenizer not: the prompt is tokenized
once by the parent process; psutil, sampled every 10 ms),
torch.cuda.max_memory_allocated on CUDA. Each mode's bandwidth limit is the bytes of weights its
decode step reads (counted on its model) over the rate of a read-only pass (a sum) over a 1 GiB
buffer on the same threads. With real weights, each weights format and dtype also gets its
perplexity on notebook 1's lab passage (921 tokens), computed once in a process of its own after the
speed runs, with the int8 notebook's `perplexity` (its uncached forward). The notebooks' model code is
imported from the notebooks themselves (support/notebook_import.py), not copied; transformers is
built from the same config (support/hf_reference.py). Run it from the repository root.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository root: gemma3_weights and support import from it

PROMPT = ("The history of computing is often told as a story of machines, but it is just as much a story "
          "of people learning to describe their problems precisely. Long before electronic computers")
MODES = ["transformers", "regular", "regular-full-head", "regular-compiled", "kv-cache", "kv-cache-compiled",
         "kv-cache-int8", "kv-cache-int8-compiled"]
LABELS = {
    "transformers": "transformers generate (baseline)",
    "regular": "regular (no cache)",
    "regular-full-head": "regular, head on every position",
    "regular-compiled": "regular compiled",
    "kv-cache": "KV cache",
    "kv-cache-compiled": "KV cache compiled",
    "kv-cache-int8": "KV cache, int8 weights",
    "kv-cache-int8-compiled": "KV cache, int8 weights, compiled",
}
COMPILED = {"regular-compiled", "kv-cache-compiled", "kv-cache-int8-compiled"}
PROMPT_TOKENS = 32  # the prompt's length with --random-weights (the text prompt is about as long)
SLOW = {"regular", "regular-full-head", "regular-compiled"}  # recompute everything: fewer tokens


# ---------------------------------------------------------------- one mode, in its own process
def run_mode(mode: str, dtype_name: str, new_tokens: int, device_name: str, random_weights: bool) -> dict:
    import torch

    from support.notebook_import import NOTEBOOK_1, NOTEBOOK_2, NOTEBOOK_3, import_notebook, notebook_model

    PeakRSS.start()  # before anything is loaded: the peak includes loading the weights
    torch.manual_seed(0)
    device = torch.device(device_name)
    dtype = getattr(torch, dtype_name)
    notebook = NOTEBOOK_3 if "int8" in mode else NOTEBOOK_2 if mode.startswith("kv-cache") else NOTEBOOK_1
    nb = import_notebook(notebook)
    cfg = dict(nb.GEMMA3_CONFIG_270M, dtype=dtype)
    if random_weights:  # same shapes, same work per token: for machines without the weights
        folder = None
        token_ids = torch.randint(0, cfg["vocab_size"], (1, PROMPT_TOKENS), device=device)
    else:
        from gemma3_weights import prepare_weights

        folder = prepare_weights("offline").folder
        # Tokenized by the parent process: the tokenizer (0.3 GB resident for Gemma's 262,144 pieces) is not the
        # model's memory, and would count in every mode's peak.
        token_ids = torch.tensor([[int(i) for i in os.environ["BENCHMARK_PROMPT_IDS"].split(",")]], device=device)

    if mode == "transformers":
        return run_transformers(cfg, folder, token_ids, new_tokens, device)

    if mode.startswith("kv-cache-int8"):  # never holds the bfloat16 weights: read straight into int8
        if folder is None:
            raise SystemExit("the int8 modes read a weights file: run them without --random-weights")
        model = nb.load_quantized(cfg, folder / "model.safetensors").to(device)
    else:
        model = notebook_model(nb, dtype, folder).to(device)
    step_bytes = weight_bytes(model)
    generator, kwargs = model, {}
    if mode == "regular-full-head":  # the last position's logits, computed the wasteful way
        generator = FullHead(model)
    elif mode == "regular-compiled":
        generator = torch.compile(model, dynamic=True)  # generate_text_stream calls it as it calls the model
    if mode in ("kv-cache-compiled", "kv-cache-int8-compiled"):
        kwargs["decode"] = nb.compile_decode(model)  # as the notebook calls it
    if mode.startswith("kv-cache"):  # the cache at its final size from the start: warm-up and run share it
        model.setup_cache(token_ids.shape[1] + new_tokens)

    def generate(n):
        stamps = []
        for _ in nb.generate_text_stream(generator, token_ids, n, **kwargs):
            if device.type == "cuda":
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())
        return stamps

    return measure(generate, 3 if mode in COMPILED else 2, new_tokens, device) | {"step_bytes": step_bytes}


def weight_bytes(model) -> int:
    """Bytes of weights a decode step reads: every parameter once (a tied head once) and int8 tables with their
    scales; RoPE tables and caches aside."""
    tensors = {id(t): t for t in model.parameters()}
    tensors |= {id(t): t for name, t in model.named_buffers() if name.endswith(("weight_int8", "scale"))}
    return sum(t.numel() * t.element_size() for t in tensors.values())


class FullHead:
    """Notebook 1's model with the output head applied to every position (what not to do); only the last
    position's logits are returned, as with last_token_only."""

    def __init__(self, model):
        self.model, self.cfg = model, model.cfg

    def __call__(self, token_ids, last_token_only=False):
        return self.model(token_ids)[:, -1:]


def run_perplexity(weights: str, dtype_name: str, device_name: str) -> dict:
    """Perplexity of notebook 1's lab passage with the int8 notebook's model: `weights` "as converted" or "int8"."""
    import torch

    from gemma3_weights import prepare_weights
    from support.notebook_import import NOTEBOOK_3, import_notebook, notebook_model

    nb = import_notebook(NOTEBOOK_3)
    passage = nb.LAB_PASSAGE
    folder = prepare_weights("offline").folder
    dtype = getattr(torch, dtype_name)
    if weights == "int8":
        model = nb.load_quantized(dict(nb.GEMMA3_CONFIG_270M, dtype=dtype), folder / "model.safetensors")
    else:
        model = notebook_model(nb, dtype, folder)
    ids = torch.tensor([nb.Gemma3Tokenizer(folder / "tokenizer.json").encode(passage)], device=device_name)
    return {"perplexity": nb.perplexity(model.to(device_name), ids), "tokens": ids.shape[1]}


def run_transformers(cfg, folder, token_ids, new_tokens, device):
    import tempfile

    import torch
    from transformers import Gemma3ForCausalLM
    from transformers.generation.streamers import BaseStreamer

    from support.hf_reference import hf_config, hf_model_from_folder

    if folder is None:
        config = hf_config(cfg)
        config._attn_implementation = "sdpa"  # transformers' default for this model
        model = Gemma3ForCausalLM(config).to(cfg["dtype"])
    else:  # transformers' own loading, which fails on a missing tensor rather than leaving it random
        with tempfile.TemporaryDirectory() as work_dir:  # holds only config.json and a (hard) link to the weights
            model = hf_model_from_folder(cfg, folder, work_dir, attn_implementation="sdpa")
    model.to(device).eval()

    class Stamps(BaseStreamer):
        def __init__(self):
            self.stamps, self.prompt_seen = [], False

        def put(self, value):
            if not self.prompt_seen:  # the first call hands over the prompt
                self.prompt_seen = True
                return
            if device.type == "cuda":
                torch.cuda.synchronize()
            self.stamps.append(time.perf_counter())

        def end(self):
            pass

    step_bytes = weight_bytes(model)

    def generate(n):
        streamer = Stamps()
        with torch.no_grad():
            model.generate(token_ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, streamer=streamer,
                           pad_token_id=0, top_p=None, top_k=None)
        return streamer.stamps

    return measure(generate, 2, new_tokens, device) | {"step_bytes": step_bytes}


def measure(generate, warmup_tokens, new_tokens, device):
    """Warm up (compiling, if compiled), then time one generation; `generate(n)` returns token times."""
    import torch

    warmup_start = time.perf_counter()
    generate(warmup_tokens)
    warmup_seconds = time.perf_counter() - warmup_start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    stamps = generate(new_tokens)
    assert len(stamps) == new_tokens, f"generated {len(stamps)} of {new_tokens} tokens"
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else PeakRSS.peak
    return {
        "ttft_s": stamps[0] - start,
        "decode_tok_s": (len(stamps) - 1) / (stamps[-1] - stamps[0]),
        "tokens": len(stamps),
        "peak_bytes": peak,
        "warmup_s": warmup_seconds,
    }


class PeakRSS:
    """The process's peak resident memory in bytes, sampled with psutil (the same on Linux, macOS, Windows).

    A background thread reads the RSS every 10 ms (about 20 us a read: no measurable cost to the
    timings); a spike shorter than that can be missed.
    """

    peak = 0

    @classmethod
    def start(cls, interval: float = 0.01):
        import psutil

        process = psutil.Process()

        def sample():
            while True:
                cls.peak = max(cls.peak, process.memory_info().rss)
                time.sleep(interval)

        cls.peak = process.memory_info().rss
        threading.Thread(target=sample, name="peak-rss", daemon=True).start()


# ---------------------------------------------------------------- the machine
def machine_description(device_name: str) -> str:
    import torch

    if device_name == "cuda":
        what = torch.cuda.get_device_name()
    else:
        model_name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
                if line.startswith("model name"):
                    model_name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        capability = torch.backends.cpu.get_cpu_capability()
        what = f"{model_name}, {torch.get_num_threads()} threads, CPU capability {capability}"
    return f"{what}; torch {torch.__version__}; Python {platform.python_version()}"


def read_bandwidth(device_name: str) -> float:
    """Bytes per second read by a sum over 1 GiB, far larger than any cache, on torch's threads: how decode
    reads its weights (read-only; a copy would also write, and count its writes)."""
    import torch

    buffer = torch.ones(2**30 // 4, dtype=torch.float32, device=device_name)  # 1 GiB, every page touched
    best = float("inf")
    for _ in range(5):
        if device_name == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        buffer.sum()
        if device_name == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return buffer.numel() * buffer.element_size() / best


# ---------------------------------------------------------------- the whole table
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", default="bfloat16,float32", help="comma-separated (default: both)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of: " + ", ".join(MODES))
    parser.add_argument("--new-tokens", type=int, default=100, help="tokens generated by the cached modes")
    parser.add_argument("--slow-new-tokens", type=int, default=30,
                        help="tokens generated by the modes without a cache (each step recomputes everything)")
    parser.add_argument("--no-compile", action="store_true", help="skip the compiled modes (compiling takes minutes)")
    parser.add_argument("--device", default="cuda" if _cuda_available() else "cpu")
    parser.add_argument("--random-weights", action="store_true",
                        help="random weights of the real shapes (speed only), for a machine without the weights")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--chart", type=Path, help="also draw decode tokens/s per mode into this PNG")
    parser.add_argument("--from-json", type=Path, help="redraw the table and chart of an earlier --json run")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds one mode may take, compiling included, before it is stopped (default: 1800)")
    parser.add_argument("--no-perplexity", action="store_true", help="skip the perplexity of each weights format")
    parser.add_argument("--one", nargs=3, metavar=("MODE", "DTYPE", "TOKENS"), help=argparse.SUPPRESS)
    parser.add_argument("--perplexity-of", nargs=2, metavar=("WEIGHTS", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.one:  # a child process: measure one mode, print JSON
        mode, dtype_name, tokens = args.one
        print("RESULT " + json.dumps(run_mode(mode, dtype_name, int(tokens), args.device, args.random_weights)))
        return
    if args.perplexity_of:  # a child process: one perplexity, print JSON
        print("RESULT " + json.dumps(run_perplexity(*args.perplexity_of, args.device)))
        return

    if args.from_json:
        saved = json.loads(args.from_json.read_text(encoding="utf-8"))
        print(table(saved["results"], saved["bandwidth"], saved["machine"]))
        if args.chart:
            chart(saved["results"], saved["machine"], args.chart)
        return

    modes = [m for m in args.modes.split(",") if not (args.no_compile and m in COMPILED)]
    if not args.random_weights:  # every child generates from these ids (see run_mode)
        os.environ["BENCHMARK_PROMPT_IDS"] = ",".join(map(str, prompt_ids()))
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown mode(s) {unknown}; choose from {MODES}")
    print(f"machine: {machine_description(args.device)}")
    bandwidth = read_bandwidth(args.device)
    print(f"read bandwidth: {bandwidth / 1e9:.1f} GB/s (a sum over 1 GiB)\n")

    results = []
    for dtype_name in args.dtypes.split(","):
        for mode in modes:
            if mode.startswith("kv-cache-int8") and dtype_name != "bfloat16":
                continue  # the int8 kernels take bfloat16 activations; float32 ones are slow and beside the point
            if mode.startswith("kv-cache-int8") and args.random_weights:
                continue  # load_quantized reads a weights file
            tokens = args.slow_new_tokens if mode in SLOW else args.new_tokens
            started = time.perf_counter()
            result = child_result(["--one", mode, dtype_name, str(tokens)], args, f"{mode} {dtype_name}")
            if result is None:
                continue
            result |= {"mode": mode, "dtype": dtype_name}
            results.append(result)
            print(f"  {LABELS[mode]:34s} {dtype_name:9s} {result['decode_tok_s']:7.1f} tok/s "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)

    if not (args.random_weights or args.no_perplexity):  # once per weights format and dtype, after the speed runs
        for weights, dtype_name in sorted({(weights_of(r["mode"]), r["dtype"]) for r in results}):
            found = child_result(["--perplexity-of", weights, dtype_name], args, f"perplexity {weights} {dtype_name}")
            for r in results:
                if found and (weights_of(r["mode"]), r["dtype"]) == (weights, dtype_name):
                    r["perplexity"] = found["perplexity"]
            if found:
                print(f"  perplexity, {weights} weights, {dtype_name}: {found['perplexity']:.2f} "
                      f"({found['tokens']} tokens)", flush=True)

    print()
    print(table(results, bandwidth, machine_description(args.device)))
    if args.chart:
        chart(results, machine_description(args.device), args.chart)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_description(args.device), "bandwidth": bandwidth,
                                         "results": results}, indent=2), encoding="utf-8")


def prompt_ids() -> list[int]:
    """PROMPT's token ids, with notebook 2's tokenizer."""
    from gemma3_weights import prepare_weights
    from support.notebook_import import NOTEBOOK_2, import_notebook

    folder = prepare_weights("offline").folder
    return import_notebook(NOTEBOOK_2).Gemma3Tokenizer(folder / "tokenizer.json").encode(PROMPT)


def weights_of(mode: str) -> str:
    return "int8" if mode.startswith("kv-cache-int8") else "as converted"


def child_result(arguments, args, what):
    """Run this module in a fresh process with `arguments`; its RESULT line as a dict, or None (said why)."""
    try:
        child = subprocess.run(
            [sys.executable, "-m", "support.benchmark", "--device", args.device, *arguments]
            + ["--random-weights"] * args.random_weights,
            capture_output=True, encoding="utf-8", errors="replace", timeout=args.timeout, cwd=ROOT,
            env=os.environ | {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONIOENCODING": "utf-8"})
    except subprocess.TimeoutExpired:
        print(f"{what}: FAILED, stopped after {args.timeout:.0f} s (raise --timeout)")
        return None
    lines = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
    if child.returncode or not lines:
        print(f"{what}: FAILED\n{child.stderr[-2000:]}")
        return None
    return json.loads(lines[-1][len("RESULT "):])


def chart(results, machine, path):
    """Horizontal bars of decode tokens/s, one group per dtype."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.35 * len(results) + 1.2))
    labels = [f"{LABELS[r['mode']]}, {r['dtype']}" for r in results][::-1]
    values = [r["decode_tok_s"] for r in results][::-1]
    colors = ["tab:gray" if r["mode"] == "transformers" else "tab:blue" for r in results][::-1]
    ax.barh(labels, values, color=colors)
    for y, value in enumerate(values):
        ax.text(value, y, f" {value:.1f}", va="center", fontsize=8)
    ax.set_xlim(0, max(values) * 1.12)  # room for the largest bar's label
    ax.set_xlabel("decode tokens/s (higher is better; gray: transformers baseline)")
    ax.set_title(machine, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(results, bandwidth, machine):
    lines = [f"Machine: {machine}",
             f"Read bandwidth {bandwidth / 1e9:.1f} GB/s (a sum over 1 GiB). A mode's bandwidth limit is the bytes of "
             "weights its decode step reads over that rate.", "",
             "| mode | dtype | decode tok/s | vs transformers | weights read per step | of bandwidth limit | "
             "perplexity | time to first token | peak memory | tokens |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    baseline = {r["dtype"]: r["decode_tok_s"] for r in results if r["mode"] == "transformers"}
    for r in results:
        ratio = f"{r['decode_tok_s'] / baseline[r['dtype']]:.2f}x" if r["dtype"] in baseline else "n/a"
        limit = bandwidth / r["step_bytes"]  # tokens/s if a step did nothing but read its weights once
        ppl = f"{r['perplexity']:.2f}" if "perplexity" in r else "n/a"
        lines.append(f"| {LABELS[r['mode']]} | {r['dtype']} | {r['decode_tok_s']:.1f} | {ratio} | "
                     f"{r['step_bytes'] / 1e6:.0f} MB | {r['decode_tok_s'] / limit:.0%} of {limit:.0f} | {ppl} | "
                     f"{r['ttft_s'] * 1000:.0f} ms | {r['peak_bytes'] / 1e9:.2f} GB | {r['tokens']} |")
    return "\n".join(lines)


def _cuda_available():
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()
