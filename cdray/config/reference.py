"""The config reference (every field, its type and default) as markdown: docs/config.md."""
from __future__ import annotations

import dataclasses
import typing

from cdray.config.loading import _type_name
from cdray.config.plain import to_dict
from cdray.config.sweep import ProfileConfig, SweepConfig


def field_reference(cls: type = SweepConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted name, type, default) for every leaf field: the README's config reference."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(field_reference(tp, name + "."))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = "(required)"
        rows.append((name, _type_name(tp), repr(to_dict(default))))
        inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        if inner:  # a list of (or optional) sections: document the element's own fields too
            suffix = "[]." if typing.get_origin(tp) is tuple else "."
            rows.extend(field_reference(inner[0], name + suffix))
    return rows



def reference_markdown() -> str:
    """The config reference table, generated from the dataclasses (docs/config.md holds it; a test
    keeps the two in sync)."""
    lines = ["| field | type | default |", "|---|---|---|"]
    rows = field_reference() + field_reference(ProfileConfig, "profiles.<name>.")
    for name, tp, default in rows:
        tp = tp.replace("|", "\\|")
        lines.append(f"| `{name}` | {tp} | `{default}` |")
    return "\n".join(lines)


DOC = """# cdray config reference

Every field of a sweep file, its type and its default, generated from `cdray/config/` (regenerate
with `python -m cdray.config.reference > docs/config.md`; `tests/test_config.py` checks it). What
each field means is said where it is defined, in `cdray/config/*.py`. A profile
(`profiles.<name>.`) may set only the plumbing listed at the end.

One key is not a field: `preset` in a model section (`expert.model`, `mixed_model`,
`small.candidates[i]`) fills in a named shape (`micro`, `tiny`, `good`, `small-10x512`, ...:
`MODEL_PRESETS` in `cdray/config/models.py`) under the fields written beside it. Likewise the field
`generation.paper_compat: true` fills in the released code's generation settings (refusing a
conflicting explicit one).

## Axes and searches

`grid.k`, `grid.r`, `grid.p`, `grid.strategy`, `grid.q` and `grid.seed` are the paper's axes: per
seed one BASELINE cell (q = 0) and one cell per synthetic corpus (strategy x amateur) and q > 0.

`grid.fields` adds an axis over any field of what a sweep computes, checked as `--set` checks it
(an execution knob, a plumbing section, an axis whose every value is the sweep's own, or a bad value
is one error naming `grid.fields.<name>[i]`):

```yaml
grid:
  fields:
    train.weight_decay: [0.1, 1.0]          # the students' runs (BASELINE and mixed) per value
    generation.decoding.top_k: [null, 50]   # one synthetic corpus per value
    generation.decoding: [{}, {top_k: 50}, {top_p: 0.9}]   # a section: each value patches it
```

A `train.*` axis varies the students' runs only (the GOOD, the amateurs and the corpora keep their
keys), a `generation.*` axis makes a corpus per value, an `expert.*` axis a GOOD per value. Each arm
carries the values that change it (`CD-EARLY-157 weight_decay=1.0`) and is compared with the BASELINE
that shares them; MLflow child runs log them as params, with the resolved config as an artifact.
An axis over a section takes mappings, each setting its fields over the section as written (`{}` is
the section as written): the paper's truncation settings, a union rather than a product
(`sweeps/truncation.yaml`).

`search` decides which cells run. `algorithm: grid` (the default) runs every combination.
`algorithm: random` or `optuna` runs `samples` cells drawn by Ray Tune's random search
(`BasicVariantGenerator`) or `OptunaSearch`, seeded by `search.seed`, over the arms the grid names,
`grid.q`, `grid.seed` and `grid.fields`; there `grid.q` and a `grid.fields` entry may be a range:

```yaml
grid: {k: [157], strategy: [no_contrast, contrastive], q: {low: 0.0, high: 0.7}, seed: [43],
       fields: {train.weight_decay: {low: 0.01, high: 3.0, log: true}}}
search: {algorithm: optuna, samples: 12, seed: 0, scheduler: asha}
```

A drawn value from a range is rounded to 3 significant digits; a drawn point is the cell the grid
would build for the same values (same keys: a search reuses a grid's runs and the other way round).
The search minimises `search.metric`, by default `best_ppl`: the best in-training eval-split
perplexity over the milestones a cell has reached, i.e. the report's best-checkpoint selection
applied to them. `scheduler: asha` (Tune's `ASHAScheduler`, time = training step) compares the
cells at rungs `grace_steps x reduction_factor^i` and stops one whose best-so-far trails the best
1/`reduction_factor` there. The rule that keeps the best-checkpoint selection honest: a cell is
never stopped before `search.grace_steps` (by default the first milestone at or past a quarter of
training: set it later if your runs' best checkpoints come later), and what ASHA compares is the selection's own value over the milestones reached, never a later one. A
stopped cell keeps its committed milestones in the store, its MLflow child run ends `KILLED`
tagged `cdray.stopped_at_step`, and the arm table and the report list it as stopped. A search (or
ASHA on the grid) that a killed driver left is resumed by Tune's restore on the next `cdray sweep`:
finished and stopped cells stay so, the search's state is kept.

"""


if __name__ == "__main__":
    print(DOC + reference_markdown())
