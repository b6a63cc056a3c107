"""Benchmark: forward+backward throughput and peak memory of our UNet against diffusers' UNet2DModel
configured to the same architecture.

Models (same parameter count in both implementations, checked before timing):

* ``ddpm``  — the DDPM CIFAR-10 UNet (conf/model/unet_ddpm_cifar10.yaml, 35,746,307 parameters;
  diffusers: the layout of google/ddpm-cifar10-32).
* ``small`` — conf/model/unet_cifar_small.yaml (32x32x3, widths 32/64/128, 2 blocks, 4-head
  attention at 8x8, scale-shift norm; 4,118,051 parameters). diffusers has one GroupNorm group count
  for all widths: 8 there; ours uses min(32, C/4) = 8/16/32 (no parameter or FLOP difference).

One step = forward of a random batch (x, integer timesteps), MSE loss against random targets,
backward; train mode (dropout on). Throughput = batch / step time (the minimum over the timed steps
on CPU, the median on GPU; both are saved in the JSON), both implementations in one process with
their timed steps interleaved, so that load changes on a shared machine hit both alike.
Memory, two ways: activations = bytes of the distinct non-parameter tensors autograd saves for
backward in one forward (exact, allocator-independent; what grows with the batch), and peak = on GPU
``torch.cuda.max_memory_allocated`` during the timed steps (parameters, gradients, activations), on
CPU the growth of the process's peak RSS from before the first step (gradients, activations,
allocator slack; coarse), each (model, implementation, batch) in a fresh subprocess so that peaks
do not leak across runs. Activations are measured on the eager network (compile may recompute).

Device auto-detected. channels_last on for both implementations (on this CPU it makes both ~1.6x
faster than the contiguous layout); on CUDA also bf16 autocast and ``torch.compile``; on CPU fp32
and no compile (inductor's compile time dwarfs a CPU benchmark).
Flags override. Writes RESULTS.md and bench_networks.png next to this file and prints the table.

    .venv/bin/pip install -e '.[bench]'          # diffusers
    .venv/bin/python experiments/bench_networks/run.py              # auto settings
    .venv/bin/python experiments/bench_networks/run.py --batch-sizes 1 2 4 --threads 1
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CPU_BATCHES = {"ddpm": [1, 2, 4, 8], "small": [1, 4, 16, 64]}
GPU_BATCHES = {"ddpm": [1, 2, 4, 8, 16, 32, 64, 128], "small": [1, 2, 4, 8, 16, 32, 64, 128]}


# --- the two implementations of each model ----------------------------------------------------------


def build(model: str, impl: str):
    import torch  # noqa: F401

    if impl == "ours":
        from hydra.utils import instantiate
        from omegaconf import OmegaConf

        name = {"ddpm": "unet_ddpm_cifar10", "small": "unet_cifar_small"}[model]
        node = OmegaConf.merge({"dataset": {"channels": 3, "image_size": 32}},
                               {"model": OmegaConf.load(REPO / "conf" / "model" / f"{name}.yaml")})
        return instantiate(node.model)
    from diffusers import UNet2DModel

    if model == "ddpm":
        return UNet2DModel(
            sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
            layers_per_block=2, down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attention_head_dim=None,
            norm_eps=1e-6, norm_num_groups=32, downsample_padding=1, flip_sin_to_cos=False, freq_shift=1,
            dropout=0.1, resnet_time_scale_shift="default", add_attention=True,
        )
    return UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(32, 64, 128), layers_per_block=2,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), attention_head_dim=32,
        norm_eps=1e-6, norm_num_groups=8, downsample_padding=1, flip_sin_to_cos=False, freq_shift=1,
        dropout=0.1, resnet_time_scale_shift="scale_shift", add_attention=True,
        attn_norm_num_groups=8,  # else diffusers drops the mid-block attention norm with scale-shift
    )


# --- one measurement (runs in a subprocess) -----------------------------------------------------------


def _reset_rss_peak() -> int:
    """Reset the peak-RSS mark where the OS allows it (Linux: /proc/self/clear_refs "5"); returns
    the current RSS in bytes, the baseline for the growth measured by ``_rss_peak_bytes``."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return _rss_peak_bytes()


def _rss_peak_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if platform.system() == "Darwin" else r * 1024


class _Runner:
    """One implementation of one model, ready to take training steps on a fixed random batch."""

    def __init__(self, model: str, impl: str, batch: int, device: str, bf16: bool, compile_: bool, channels_last: bool):
        import torch

        torch.manual_seed(0)
        self.impl, self.device, self.bf16 = impl, device, bf16
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.net = build(model, impl).to(device).train().to(memory_format=fmt)
        self.params = sum(p.numel() for p in self.net.parameters())
        self.fwd = torch.compile(self.net) if compile_ else self.net
        self.x = torch.randn(batch, 3, 32, 32, device=device).to(memory_format=fmt)
        self.t = torch.randint(0, 1000, (batch,), device=device)
        self.target = torch.randn(batch, 3, 32, 32, device=device)
        self.sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step(self) -> float:
        import torch

        t0 = time.perf_counter()
        out = step_forward(self.fwd, self.impl, self.x, self.t, self.bf16, self.device)
        torch.nn.functional.mse_loss(out.float(), self.target).backward()
        for p in self.net.parameters():
            p.grad = None
        self.sync()
        return time.perf_counter() - t0

    def activation_mib(self) -> float:
        """Eager (uncompiled) activations saved for backward."""
        return saved_activation_bytes(self.net, lambda: step_forward(self.net, self.impl, self.x, self.t, self.bf16, self.device)) / 2**20


def _oom_types():
    import torch

    return (torch.cuda.OutOfMemoryError, MemoryError) if torch.cuda.is_available() else (MemoryError,)


def measure_time(model: str, batch: int, device: str, bf16: bool, compile_: bool, channels_last: bool,
                 warmup: int, steps: int, threads: int | None) -> dict:
    """Both implementations in one process, timed steps interleaved (ABBA...), so that changes of
    load on a shared machine hit both alike. Median step time of each."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    try:
        runners = {impl: _Runner(model, impl, batch, device, bf16, compile_, channels_last) for impl in ("ours", "diffusers")}
        for r in runners.values():
            for _ in range(warmup):
                r.step()
        times: dict[str, list[float]] = {impl: [] for impl in runners}
        for i in range(steps):
            for impl in (("ours", "diffusers") if i % 2 == 0 else ("diffusers", "ours")):
                times[impl].append(runners[impl].step())
    except _oom_types():
        return {"model": model, "batch": batch, "oom": True}
    return {"model": model, "batch": batch, "oom": False,
            "params": {impl: r.params for impl, r in runners.items()},
            "img_per_s_median": {impl: batch / statistics.median(ts) for impl, ts in times.items()},
            "img_per_s_min": {impl: batch / min(ts) for impl, ts in times.items()}}


def measure_memory(model: str, impl: str, batch: int, device: str, bf16: bool, compile_: bool, channels_last: bool,
                   warmup: int, steps: int, threads: int | None) -> dict:
    """One implementation alone in a fresh process: peak memory over two steps after warm-up
    (GPU: allocator peak; CPU: peak-RSS growth from before the first step), and eager activations."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    try:
        r = _Runner(model, impl, batch, device, bf16, compile_, channels_last)
        base = _reset_rss_peak()
        for _ in range(warmup):
            r.step()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(2):
            r.step()
        peak = torch.cuda.max_memory_allocated() if device == "cuda" else _rss_peak_bytes() - base
        act = r.activation_mib()
    except _oom_types():
        return {"model": model, "impl": impl, "batch": batch, "oom": True}
    return {"model": model, "impl": impl, "batch": batch, "oom": False, "peak_mib": peak / 2**20, "act_mib": act}


def step_forward(fwd, impl: str, x, t, bf16: bool, device: str):
    import torch

    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
        return fwd(x, t.float()) if impl == "ours" else fwd(x, t).sample


def saved_activation_bytes(net, forward) -> int:
    """Bytes of the distinct non-parameter tensors autograd saves for backward in one forward: the
    activation memory of a training step, exact and independent of the allocator."""
    import torch

    params = {p.data_ptr() for p in net.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        try:
            st = t.untyped_storage()
            ptr = st.data_ptr()
            if ptr not in params:
                seen[ptr] = st.nbytes()
        except (RuntimeError, NotImplementedError):  # e.g. tensors without storage under compile
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    del out
    return sum(seen.values())


# --- driver -------------------------------------------------------------------------------------------


def _child(args, kind: str, **kw) -> dict:
    spec = dict(kind=kind, device=args.device, bf16=args.bf16, compile_=args.compile, channels_last=args.channels_last,
                warmup=args.warmup, steps=args.steps, threads=args.threads, **kw)
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
        return {"oom": True, "error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_one(args, model: str, batch: int) -> list[dict]:
    """Rows (one per implementation) for one model and batch size."""
    timing = _child(args, "time", model=model, batch=batch)
    rows = []
    for impl in ("ours", "diffusers"):
        mem = _child(args, "memory", model=model, impl=impl, batch=batch)
        row = {"model": model, "impl": impl, "batch": batch, "oom": bool(timing.get("oom") or mem.get("oom"))}
        if not row["oom"]:
            row.update(params=timing["params"][impl], img_per_s=timing[f"img_per_s_{args.stat}"][impl],
                       img_per_s_median=timing["img_per_s_median"][impl], img_per_s_min=timing["img_per_s_min"][impl],
                       peak_mib=mem["peak_mib"], act_mib=mem["act_mib"])
        rows.append(row)
    return rows


def table(results: list[dict]) -> str:
    rows = ["| model | batch | ours img/s | diffusers img/s | speed ratio | ours act. MiB | diffusers act. MiB | act. ratio | ours peak MiB | diffusers peak MiB | peak ratio |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    by = {(r["model"], r["impl"], r["batch"]): r for r in results}
    for model in dict.fromkeys(r["model"] for r in results):
        for batch in sorted({r["batch"] for r in results if r["model"] == model}):
            o, d = by.get((model, "ours", batch)), by.get((model, "diffusers", batch))
            if not o or not d or o.get("oom") or d.get("oom"):
                cell = lambda r: "OOM" if not r or r.get("oom") else "%.1f" % r["img_per_s"]  # noqa: E731
                rows.append(f"| {model} | {batch} | {cell(o)} | {cell(d)} |" + " – |" * 7)
                continue
            peak_ratio = o["peak_mib"] / d["peak_mib"] if d["peak_mib"] > 0 else float("nan")
            rows.append(f"| {model} | {batch} | {o['img_per_s']:.1f} | {d['img_per_s']:.1f} | "
                        f"{o['img_per_s'] / d['img_per_s']:.2f} | {o['act_mib']:.1f} | {d['act_mib']:.1f} | "
                        f"{o['act_mib'] / d['act_mib']:.2f} | {o['peak_mib']:.0f} | {d['peak_mib']:.0f} | {peak_ratio:.2f} |")
    return "\n".join(rows)


def plot(results: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in results))
    fig, axes = plt.subplots(2, len(models), figsize=(5 * len(models), 7), squeeze=False)
    for j, model in enumerate(models):
        for impl, style in (("ours", "o-"), ("diffusers", "s--")):
            rs = sorted((r for r in results if r["model"] == model and r["impl"] == impl and not r.get("oom")),
                        key=lambda r: r["batch"])
            axes[0, j].plot([r["batch"] for r in rs], [r["img_per_s"] for r in rs], style, label=impl)
            axes[1, j].plot([r["batch"] for r in rs], [r["peak_mib"] for r in rs], style, label=impl)
        for i, ylabel in enumerate(("images/s (fwd+bwd)", "peak memory (MiB)")):
            axes[i, j].set_xscale("log", base=2)
            axes[i, j].set_xlabel("batch size")
            axes[i, j].set_ylabel(ylabel)
            axes[i, j].grid(alpha=0.3)
            axes[i, j].legend()
        axes[0, j].set_title(f"{model} UNet")
    import textwrap

    fig.suptitle("\n".join(textwrap.wrap(title, 110)), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--models", nargs="+", default=["ddpm", "small"], choices=["ddpm", "small"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=None, help="default: 1-128 on GPU, fewer on CPU")
    p.add_argument("--device", default=None, help="cuda or cpu (default: auto)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="default: on with CUDA")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="default: on with CUDA")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None, help="default: on")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--stat", choices=["min", "median"], default=None,
                   help="step-time statistic of the table (both are saved): default min (best of N) on CPU, "
                        "where other processes only ever add time, median on GPU")
    p.add_argument("--out", default=str(HERE))
    args = p.parse_args()
    if args.child:
        spec = json.loads(args.child)
        kind = spec.pop("kind")
        if kind == "time":
            spec.pop("impl", None)
            print(json.dumps(measure_time(**spec)))
        else:
            print(json.dumps(measure_memory(**spec)))
        return

    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    gpu = args.device == "cuda"
    args.bf16 = gpu and (torch.cuda.is_bf16_supported() if gpu else False) if args.bf16 is None else args.bf16
    args.compile = gpu if args.compile is None else args.compile
    args.channels_last = True if args.channels_last is None else args.channels_last  # helps on CPU too (oneDNN)
    args.warmup = args.warmup if args.warmup is not None else (3 if args.compile else 1)
    args.steps = args.steps if args.steps is not None else (20 if gpu else 10)
    args.stat = args.stat or ("median" if gpu else "min")
    import diffusers

    device_name = torch.cuda.get_device_name() if gpu else f"CPU ({platform.processor() or platform.machine()}, {args.threads or torch.get_num_threads()} threads)"
    settings = (f"device {device_name}; torch {torch.__version__}, diffusers {diffusers.__version__}; "
                f"bf16 autocast {'on' if args.bf16 else 'off'}, torch.compile {'on' if args.compile else 'off'}, "
                f"channels_last {'on' if args.channels_last else 'off'}; {args.warmup} warm-up + {args.steps} timed steps per implementation, interleaved; throughput from the {args.stat} step time")
    print(settings, flush=True)
    results = []
    for model in args.models:
        for batch in args.batch_sizes or (GPU_BATCHES if gpu else CPU_BATCHES)[model]:
            for r in run_one(args, model, batch):
                results.append(r)
                print(f"  {model:5s} {r['impl']:9s} batch {batch:4d}: "
                      + ("OOM/error" if r.get("oom") else f"{r['img_per_s']:8.1f} img/s  act. {r['act_mib']:7.1f} MiB  peak {r['peak_mib']:7.0f} MiB  ({r['params']:,} params)"),
                      flush=True)
    for model in args.models:
        counts = {r["impl"]: r["params"] for r in results if r["model"] == model and "params" in r}
        assert len(set(counts.values())) == 1, f"{model}: parameter counts differ: {counts}"
    out = Path(args.out)
    tag = "gpu" if gpu else "cpu"
    png = out / f"bench_networks_{tag}.png"
    plot(results, png, settings)
    tab = table(results)
    (out / f"results_{tag}.json").write_text(json.dumps({"settings": settings, "results": results}, indent=1))
    print("\n" + tab)
    write_results_md(out)


def write_results_md(out: Path) -> None:
    """RESULTS.md gathers every device's latest run (results_cpu.json, results_gpu.json)."""
    parts = ["# Network benchmark: our UNet vs diffusers' UNet2DModel (same architecture)",
             "", "Forward+backward of an MSE loss, train mode. Written by `run.py` (see its docstring for the method).",
             "Ratios are ours/diffusers: > 1 for speed and < 1 for memory favour ours.", ""]
    for tag in ("gpu", "cpu"):
        f = out / f"results_{tag}.json"
        if not f.exists():
            parts += [f"## {tag.upper()}", "", f"Not measured yet: run `.venv/bin/python experiments/bench_networks/run.py` on a {tag.upper()} machine.", ""]
            continue
        data = json.loads(f.read_text())
        parts += [f"## {tag.upper()}", "", data["settings"], "", table(data["results"]), "",
                  f"![throughput and memory](bench_networks_{tag}.png)", ""]
    (out / "RESULTS.md").write_text("\n".join(parts))


if __name__ == "__main__":
    main()
