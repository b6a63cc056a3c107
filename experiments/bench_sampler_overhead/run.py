"""Sampler overhead: how much wall time a sampler spends beyond NFE × (one forward pass of the network).

For each (network, sampler) it runs ``Sampler(...)(denoiser, ...)`` with the network wrapped in a
timer, so that one run gives both the time spent inside the network calls and the whole wall time:

    overhead = (sampler wall time − time inside the network) / time inside the network,

the median over ``--repeats`` runs. Both parts are measured in the same run, so load on the (shared)
machine hits them alike. It covers everything the sampling layer adds: the float64 state, the dtype
casts, the parameterization's conversion, the schedule's coefficients, the solver's own update and
the NFE counting. For reference the table also gives the bare forward time of the network on a
float32 batch (``forward ms``) and the sampler's time per NFE.

    .venv/bin/python experiments/bench_sampler_overhead/run.py [--repeats 7]

Writes RESULTS.md and results.json beside itself and prints the same table. Networks: the default
digits UNet (batch 256 of 1x8x8, as the default evaluation samples) and the MLP on 2-D data (batch
1000). Threads are fixed to 1 so that the measurement does not depend on the machine's other load.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from diffusion_lab.nets import MLP, UNet
from diffusion_lab.parameterization import Parameterization
from diffusion_lab.samplers import Denoiser, Sampler
from diffusion_lab.schedules import VPLinearSchedule

HERE = Path(__file__).resolve().parent
SAMPLERS = [("dpm_solver_pp_2m", 10), ("ddim", 10), ("heun", 10), ("ddpm", 50), ("unipc_2", 10)]


def networks() -> dict[str, tuple[torch.nn.Module, tuple[int, ...]]]:
    unet = UNet(in_channels=1, out_channels=1, image_size=8, ch=32, ch_mult=[1, 2], num_res_blocks=2,
                attn_resolutions=[4], num_heads=4, dropout=0.0, scale_shift_norm=True)
    mlp = MLP(in_dim=2, out_dim=2, hidden_dim=256, num_layers=4, emb_dim=128)
    return {"digits UNet (1.08M), batch 256": (unet.eval(), (256, 1, 8, 8)),
            "MLP on 2-D (0.69M), batch 1000": (mlp.eval(), (1000, 2))}


class TimedNetwork(torch.nn.Module):
    """The network, with the wall time of its forward calls summed."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net, self.seconds = net, 0.0

    def forward(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = self.net(*args, **kwargs)
        self.seconds += time.perf_counter() - t0
        return out


def time_forward(net: torch.nn.Module, shape: tuple[int, ...], calls: int) -> float:
    x = torch.randn(shape)
    label = torch.full((shape[0],), 500.0)
    with torch.no_grad():
        t0 = time.perf_counter()
        for _ in range(calls):
            net(x, label)
        return (time.perf_counter() - t0) / calls


def time_sampler(net: torch.nn.Module, shape: tuple[int, ...], name: str, steps: int) -> tuple[float, float, int]:
    """(wall seconds of the sampler run, seconds inside the network, NFE)."""
    timed = TimedNetwork(net)
    denoiser = Denoiser(timed, VPLinearSchedule(), Parameterization("eps"))
    sampler = Sampler(name, steps=steps)
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    res = sampler(denoiser, shape, generator=gen, progress=False)
    return time.perf_counter() - t0, timed.seconds, res.nfe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    rows = []
    for net_name, (net, shape) in networks().items():
        time_forward(net, shape, 3)  # warm-up
        for name, steps in SAMPLERS:
            time_sampler(net, shape, name, steps)  # warm-up
            ratios, fwd_ms, per_nfe_ms, nfe = [], [], [], 0
            for _ in range(args.repeats):
                wall, inside, nfe = time_sampler(net, shape, name, steps)
                ratios.append((wall - inside) / inside)
                per_nfe_ms.append(wall / nfe * 1e3)
                fwd_ms.append(time_forward(net, shape, 3) * 1e3)
            rows.append({"network": net_name, "sampler": f"{name} ({steps} steps)", "nfe": nfe,
                         "forward_ms": statistics.median(fwd_ms), "per_nfe_ms": statistics.median(per_nfe_ms),
                         "overhead": statistics.median(ratios)})
            r = rows[-1]
            print(f"{net_name:34s} {r['sampler']:28s} NFE {nfe:3d}  forward {r['forward_ms']:7.2f} ms  "
                  f"sampler per NFE {r['per_nfe_ms']:7.2f} ms  overhead {100 * r['overhead']:5.1f}%", flush=True)
    lines = ["# Sampler overhead beyond NFE × forward time", "",
             "`.venv/bin/python experiments/bench_sampler_overhead/run.py` (1 thread; median of "
             f"{args.repeats} runs; VP schedule, eps parameterization). overhead = (wall time − time inside the "
             "network) / time inside the network, both from the same run.", "",
             "| network | sampler | NFE | bare forward ms | sampler ms per NFE | overhead |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['network']} | {r['sampler']} | {r['nfe']} | {r['forward_ms']:.2f} | {r['per_nfe_ms']:.2f} | "
                     f"{100 * r['overhead']:.1f}% |")
    (HERE / "RESULTS.md").write_text("\n".join(lines) + "\n")
    (HERE / "results.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
