"""``python -m diffusion_lab.samplers``: the sampler registry as a markdown table (the README's)."""

from diffusion_lab.samplers import SAMPLERS


def table() -> str:
    rows = ["| sampler | kind | order | NFE per step | default grid | needs score | what |", "|---|---|---|---|---|---|---|"]
    for name in sorted(SAMPLERS, key=lambda n: (SAMPLERS[n].stochastic, n)):
        s = SAMPLERS[name]
        order = "—" if s.order is None else f"{s.order:g}"
        rows.append(f"| `{name}` | {'SDE' if s.stochastic else 'ODE'} | {order} | {s.nfe_per_step:g} | {s.default_grid} | "
                    f"{'yes' if s.needs_score else 'no'} | {s.description.replace(chr(124), chr(92) + chr(124))} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
