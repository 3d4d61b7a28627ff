"""Code in the keys: each stage's code, derived from its builder's imports, digested without comments
or docstrings and pinned with its version (stage_code.json), so that changing it asks for a bump or a re-pin."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

from cdray.dag.code_units import PACKAGE_DIR, builder_units, module_closure

PIN_FILE = Path(__file__).with_name("stage_code.json")
PIN_COMMAND = "python -m cdray.dag.stage_code --pin"
USAGE = f"""usage: python -m cdray.dag.stage_code          check every stage's code against its pin
       {PIN_COMMAND}    pin the code and versions as they are"""


def stage_code(name: str) -> dict[str, str]:
    """The units of code whose change can change stage `name`'s output, with their digests: its
    builder and the functions of the builder's module it reads (that module holds every stage's
    builder), then every cdray module those import, in turn, plumbing aside."""
    from cdray.dag.builders import BUILDERS

    units, modules = builder_units(BUILDERS[name])
    return dict(sorted({**units, **module_closure(modules)}.items()))


# ---- pins


def current() -> dict:
    """The pins as the code and the stage table are now."""
    from cdray.dag.stages import STAGES

    stages, code = {}, {}
    for name in sorted(STAGES):
        units = stage_code(name)
        stages[name] = {"version": STAGES[name].version, "code": list(units)}
        code.update(units)
    return {"stages": stages, "code": dict(sorted(code.items()))}


def render(pins: dict) -> str:
    """The pin file: one line per stage and one per unit of code, so that two branches changing
    different modules merge without a conflict."""
    def block(d: dict) -> str:
        return ",\n".join(f"    {json.dumps(k)}: {json.dumps(v)}" for k, v in d.items())
    return ('{\n  "stages": {\n' + block(pins["stages"]) + '\n  },\n  "code": {\n' + block(pins["code"])
            + "\n  }\n}\n")


def load_pins(path: Path = PIN_FILE) -> dict:
    if not path.is_file():
        return {"stages": {}, "code": {}}
    return json.loads(path.read_text(encoding="utf-8"))


def changed_units(now: dict, pins: dict, name: str) -> list[str]:
    """The units of stage `name` that differ from the pins: changed, new to it, or no longer read."""
    units = now["stages"][name]["code"]
    was = pins["stages"].get(name, {}).get("code", [])
    out = [f"{u} (changed)" if u in pins["code"] else f"{u} (not pinned)"
           for u in units if pins["code"].get(u) != now["code"][u]]
    out += [f"{u} (newly read)" for u in units if u not in was and pins["code"].get(u) == now["code"][u]]
    out += [f"{u} (no longer read)" for u in was if u not in units]
    return out


def problems(now: Optional[dict] = None, pins: Optional[dict] = None) -> list[str]:
    """What is wrong between the code, the stage versions and the pins, one message each: a
    stage whose code changed at the same version (bump it or re-pin), a version that went down,
    and pins that are not the current ones (re-pin)."""
    now = current() if now is None else now
    pins = load_pins() if pins is None else pins
    out = []
    for name, stage in now["stages"].items():
        pinned = pins["stages"].get(name)
        if pinned is None:
            out.append(f"stage {name!r} has no pin: run `{PIN_COMMAND}`")
            continue
        version, was = stage["version"], pinned["version"]
        changed = changed_units(now, pins, name)
        if version < was:
            out.append(f"stage {name!r}: its version went down from {was} to {version} in cdray/dag/stages.py; "
                       f"a version never goes back (its old keys would serve artifacts of other code)")
        elif version == was and changed:
            out.append(
                f"stage {name!r} (version {version}): its code changed since it was pinned:\n"
                + "".join(f"    {u}\n" for u in changed)
                + f"  If the change alters what the stage outputs for the same config and inputs, bump its "
                f"version in cdray/dag/stages.py (to {version + 1}), so that the store never serves an artifact "
                f"built by the older code under the new meaning; then, or if it alters no output, re-pin: "
                f"`{PIN_COMMAND}`")
    if not out and render(now) != render(pins):
        bumped = [n for n, s in now["stages"].items() if pins["stages"].get(n, {}).get("version") != s["version"]]
        why = f"version bumped without a re-pin: {', '.join(bumped)}" if bumped else "the pins are out of date"
        out.append(f"cdray/dag/stage_code.json: {why}; re-pin: `{PIN_COMMAND}`")
    return out


def pin(path: Path = PIN_FILE) -> list[str]:
    """Write the pins for the code and versions as they are; returns one line per stage whose
    pin changed (raises ValueError where a version went down)."""
    now, pins = current(), load_pins(path)
    lines = []
    for name, stage in now["stages"].items():
        was = pins["stages"].get(name, {}).get("version")
        if was is not None and stage["version"] < was:
            raise ValueError(f"stage {name!r}: its version went down from {was} to {stage['version']} "
                             f"in cdray/dag/stages.py; a version never goes back")
        changed = changed_units(now, pins, name)
        if was is None:
            lines.append(f"{name}: pinned at version {stage['version']}")
        elif stage["version"] != was:
            lines.append(f"{name}: version {was} -> {stage['version']}" + (f" ({len(changed)} units of code)"
                                                                        if changed else ""))
        elif changed:
            lines.append(f"{name}: re-pinned at version {was}, its output unchanged: " + ", ".join(changed))
    path.write_text(render(now), encoding="utf-8")
    return lines


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--pin"]:
        try:
            lines = pin()
        except ValueError as e:
            print(f"stage_code: error: {e}", file=sys.stderr)
            return 2
        print("\n".join(lines) if lines else "the pins were already current")
        print(f"wrote {PIN_FILE.relative_to(PACKAGE_DIR.parent)}")
        return 0
    if argv:
        print(USAGE, file=sys.stderr)
        return 2
    found = problems()
    print("\n".join(found) if found else "every stage's code matches its pin")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
