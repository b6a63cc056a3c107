"""``python -m diffusion_lab.samplers``: the sampler registry as a markdown table (the README's)."""

from diffusion_lab.samplers import SAMPLERS
from diffusion_lab.samplers.grids import FAMILIES

SHORT = {"lambda": "λ", "quadratic": "quad", "karras": "karras", "uniform": "uniform", "linspace": "linspace",
         "leading": "leading", "trailing": "trailing"}


def grid_cell(spec) -> str:
    """The default grid per family (DDPM / VP / VE / EDM / RF); ⁺ = the grid ends one step above t_min."""
    cells = [SHORT[spec.grids[f]] + ("" if spec.visits[f] else "⁺") for f in FAMILIES]
    return cells[0] if len(set(cells)) == 1 else " / ".join(cells)


def table() -> str:
    rows = ["| sampler | kind | order | NFE per step | default grid (DDPM / VP / VE / EDM / RF) | needs score | what |",
            "|---|---|---|---|---|---|---|"]
    for name in sorted(SAMPLERS, key=lambda n: (SAMPLERS[n].stochastic, n)):
        s = SAMPLERS[name]
        order = "—" if s.order is None else f"{s.order:g}"
        rows.append(f"| `{name}` | {'SDE' if s.stochastic else 'ODE'} | {order} | {s.nfe_per_step:g} | {grid_cell(s)} | "
                    f"{'yes' if s.needs_score else 'no'} | {s.description.replace(chr(124), chr(92) + chr(124))} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(table())
