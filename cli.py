"""The command line: ``precompute``, ``train``, ``runs``, ``explain``, ``export``, ``figure`` and
``serve`` (the default).

It sits above both sides: it drives the offline pipeline (``pipelines/``) and serves the
dashboard (``dashboard/``), and neither of those imports it. User mistakes end as one
``error: ...`` line on stderr and exit status 2; Ctrl-C leaves the run resumable and says so.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

from pipelines import report
from pipelines.errors import UserError
from pipelines.records import Manifest

DEFAULT_DATA_DIR = Path("data")
# pipelines.presets.PRESETS, repeated so `--help` does not import torch.
PRESET_NAMES = ("mlp", "vgg-small", "resnet-small")
EXIT_USER_ERROR = 2


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # prog is "main.py" or "main.py <command>"
        raise UserError(f"{message}; see `python {self.prog} --help`")


def comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def perplexity_list(text: str) -> list[float]:
    try:
        return [float(part) for part in comma_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"perplexities must be numbers like 10,30,90, not {text!r}"
        ) from None


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"--port must be a number 1..65535, not {text!r}")
    return port


def count_between(option: str, low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number ``low..high`` for ``option``."""

    def parse(text: str) -> int:
        value = int(text) if text.strip().isascii() and text.strip().isdigit() else -1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{option} must be a number {low}..{high}, not {text!r}"
            )
        return value

    return parse


def method_list(text: str) -> list[str]:
    """Comma-separated method names, each once, in the order given."""
    return list(dict.fromkeys(comma_list(text)))


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="main.py", description="LayerScope: see inside image-classification CNNs.")
    commands = parser.add_subparsers(dest="command", parser_class=Parser)

    serve = commands.add_parser("serve", help="serve the dashboard")
    add_data_dir(serve)
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=port_number, default=8050)
    serve.add_argument(
        "--auth",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="ask every visitor for a login (HTTP Basic; user layerscope, password from "
        "$LAYERSCOPE_PASSWORD or generated and printed at start). Off by default; required when "
        "--host is not a loopback address, unless --no-auth is given",
    )
    serve.add_argument(
        "--allow-folder",
        action="append",
        type=Path,
        default=[],
        metavar="ROOT",
        help="a server folder under which the page may pick dataset folders (repeatable; "
        "default: none)",
    )
    serve.add_argument(
        "--workers",
        type=count_between("--workers", 1, 64),
        default=None,
        help="server processes (default: one per core, at most 4)",
    )
    serve.add_argument(
        "--threads",
        type=count_between("--threads", 1, 256),
        default=None,
        help="request threads per server process (default 8)",
    )
    serve.add_argument(
        "--cache-mb",
        type=count_between("--cache-mb", 16, 1 << 20),
        default=1024,
        help="memory for on-demand results (activations, explanations of any class), in MiB, "
        "for all workers together (default 1024); beyond it the oldest go to the disk cache",
    )
    add_plugins(serve)

    pre = commands.add_parser("precompute", help="compute a run: dataset x model")
    add_run_options(pre, train_command=False)
    pre.add_argument(
        "--workers",
        choices=["local", "celery"],
        default="local",
        help="where the forward chunks and the layers' maps are computed: local (this machine, "
        "the default) or celery (Celery workers on machines sharing the data dir; needs "
        "REDIS_URL, see the README's 'Precompute across machines')",
    )
    add_training_options(pre, train_command=False)
    add_plugins(pre)

    train = commands.add_parser(
        "train",
        help="train a model (a preset, smallcnn, or a torchvision model fine-tuned) in a run",
    )
    add_run_options(train, train_command=True)
    add_training_options(train, train_command=True)
    train.add_argument(
        "--then-precompute",
        action="store_true",
        help="go on with the run's other stages, as `main.py precompute` would",
    )
    add_plugins(train)

    runs = commands.add_parser("runs", help="list runs and the state of each stage")
    add_data_dir(runs)

    explain = commands.add_parser(
        "explain", help="explain your own images with a run's model, one PNG per method"
    )
    explain.add_argument(
        "--run", required=True, metavar="RUN_ID", help="run id (`python main.py runs` lists them)"
    )
    explain.add_argument(
        "--image",
        required=True,
        action="extend",
        nargs="+",
        metavar="PATH",
        help="image file(s) to explain; repeat the flag or list several",
    )
    explain.add_argument(
        "--class",
        dest="class_",
        default=None,
        metavar="NAME_OR_INDEX",
        help="class to explain: an index, or a class name (any case, or a unique start of one); "
        "default: the predicted class",
    )
    explain.add_argument(
        "--method",
        action="extend",
        nargs="+",
        type=method_list,
        metavar="M",
        help="explanation method(s), repeated, listed or comma-separated (default: every "
        "registered one)",
    )
    explain.add_argument(
        "--layer",
        default=None,
        metavar="LAYER_ID",
        help="layer Grad-CAM weighs (default: the run's Grad-CAM layer)",
    )
    explain.add_argument(
        "--out", required=True, metavar="DIR", help="folder for the PNGs (created if missing)"
    )
    explain.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    add_data_dir(explain)
    add_plugins(explain)

    export = commands.add_parser(
        "export",
        help="write a run's sample table (and corrected labels, metrics, confusion matrix) to files",
    )
    export.add_argument(
        "--run", required=True, metavar="RUN_ID", help="run id (`python main.py runs` lists them)"
    )
    export.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="the sample table, one row per sample: FILE.csv or FILE.parquet",
    )
    export.add_argument(
        "--selection",
        default=None,
        metavar="NAME_OR_SPEC",
        help="only these samples, in every file written: a selection saved in the page, or a "
        "spec such as 'true=3;wrong', 'split=held-out', 'issues', 'rows=1-5,9' (default: all)",
    )
    export.add_argument(
        "--duplicate-threshold",
        type=similarity,
        default=None,
        metavar="T",
        help="cosine similarity at which samples form a near-duplicate group (default 0.98, "
        "where the page's slider starts)",
    )
    export.add_argument(
        "--corrections",
        default=None,
        metavar="FILE.csv",
        help="also write the corrected labels: uid,label,label_index,path_or_index",
    )
    export.add_argument(
        "--metrics",
        default=None,
        metavar="FILE.csv",
        help="also write per-class precision, recall, F1 and support",
    )
    export.add_argument(
        "--confusion",
        default=None,
        metavar="FILE.csv",
        help="also write the confusion matrix (class names as header and first column)",
    )
    add_data_dir(export)

    figure = commands.add_parser(
        "figure", help="a run's architecture for a paper (light style), as SVG or PDF"
    )
    figure.add_argument(
        "--run", required=True, metavar="RUN_ID", help="run id (`python main.py runs` lists them)"
    )
    figure.add_argument(
        "--out", required=True, metavar="FILE.svg|FILE.pdf", help="the file to write"
    )
    figure.add_argument(
        "--collapsed",
        action="store_true",
        help="draw each nested block (a ResNet bottleneck) as one box",
    )
    add_data_dir(figure)
    return parser


def add_run_options(parser: argparse.ArgumentParser, train_command: bool) -> None:
    """What defines a run, shared by ``precompute`` and ``train`` so both name the same run.
    On ``train``, ``--batch-size`` is the training batch (the forward pass's is
    ``--forward-batch-size``); on ``precompute`` the training batch is ``--train-batch-size``."""
    parser.add_argument(
        "--dataset",
        required=True,
        help="digits, imagenette, imagewoof, mnist, fashion-mnist, cifar10 or folder:PATH",
    )
    parser.add_argument(
        "--model",
        required=True,
        help=f"smallcnn, a preset ({', '.join(PRESET_NAMES)}), a torchvision name (vgg16, "
        "resnet18, ...), torchscript:PATH or python:FILE.py",
    )
    parser.add_argument(
        "--weights",
        default=None,
        help="torchvision models only: imagenet (default), none, or a state-dict PATH",
    )
    parser.add_argument(
        "--samples",
        type=int,
        default=None,
        help="use the first N samples of the class-balanced order",
    )
    parser.add_argument(
        "--subsets",
        type=comma_list,
        default=["100", "1000", "all"],
        help="nested subset sizes (default 100,1000,all)",
    )
    parser.add_argument(
        "--perplexities",
        type=perplexity_list,
        default=None,
        help="t-SNE perplexities (default 10,30,90, minus those the data is too small for)",
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--forward-batch-size" if train_command else "--batch-size",
        dest="batch_size",
        type=int,
        default=64,
        help="images per forward pass of the precompute",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="input side for torchscript/python models that do not declare one",
    )
    parser.add_argument(
        "--run-id", default=None, help="name of the run folder (default: derived from the settings)"
    )
    parser.add_argument(
        "--explain",
        type=method_list,
        default=None,
        metavar="M[,M...]",
        help="fast explanation methods stored for every sample (default for a new run: "
        "gradcam,guided_backprop,guided_gradcam; a resumed run keeps its own list)",
    )
    parser.add_argument(
        "--maps-first",
        action="store_true",
        help="store the explanations after every layer's PCA map instead of in the forward "
        "pass, so a page watching the run shows its maps sooner (one more pass over the "
        "samples; not with --workers celery). Runs started from the page do this",
    )
    parser.add_argument(
        "--folds",
        type=int,
        default=None,
        metavar="K",
        help="label issues: smallcnn's out-of-sample probabilities from K fold models (default "
        "5); 0 ranks with the model's own probabilities (the default for other models)",
    )
    parser.add_argument(
        "--quality-layer",
        default=None,
        metavar="LAYER_ID",
        help="layer whose features near-duplicates and outliers are found in (default: the last "
        "hidden layer)",
    )
    add_data_dir(parser)


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number like 0.001, not {text!r}") from None


def add_training_options(parser: argparse.ArgumentParser, train_command: bool) -> None:
    """The training options, shared by ``train`` and ``precompute`` (where any of them asks the
    run to train its model, so ``precompute`` can resume a run ``train`` began). Left out, each
    is the model's default (``pipelines.training.default_settings``)."""
    group = parser.add_argument_group(
        "training" + ("" if train_command else " (any of these makes the run train its model)")
    )
    group.add_argument("--epochs", type=int, default=None, help="epochs to train")
    group.add_argument(
        *(("--batch-size", "--train-batch-size") if train_command else ("--train-batch-size",)),
        dest="train_batch_size",
        type=int,
        default=None,
        help="training batch size",
    )
    group.add_argument(
        "--optimizer",
        default=None,
        help="adam (default) or sgd (momentum 0.9); both under a one-cycle schedule",
    )
    group.add_argument(
        "--lr", type=number, default=None, help="learning rate (the schedule peaks at 2x)"
    )
    group.add_argument("--weight-decay", type=number, default=None)
    group.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="random shifts (and left-right flips for photos, never digits)",
    )
    group.add_argument(
        "--early-stopping",
        type=int,
        default=None,
        metavar="PATIENCE",
        help="stop after PATIENCE epochs without a lower held-out loss; keep the best weights",
    )
    group.add_argument(
        "--fine-tune",
        default=None,
        help="torchvision models: train the new classifier only (classifier, default) or all",
    )


def training_from_args(args: argparse.Namespace, trains: bool) -> Any:
    """``PrecomputeConfig.training`` from the parsed options (None: no training asked for)."""
    from pipelines.run_config import training_settings

    given = {
        "epochs": args.epochs,
        "batch_size": args.train_batch_size,
        "optimizer": args.optimizer,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "augment": args.augment,
        "early_stopping": args.early_stopping,
        "fine_tune": args.fine_tune,
    }
    return training_settings(args.dataset, args.model, args.seed, given, trains)


def similarity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(
            f"--duplicate-threshold is a cosine similarity above 0 and at most 1, not {text!r}"
        )
    return value


def add_plugins(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plugins",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder of .py files that each register an explanation method",
    )


def add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=data_dir_path,
        default=DEFAULT_DATA_DIR,
        help="where runs live (default data/)",
    )


def data_dir_path(text: str) -> Path:
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(
            f"{text} is a file; pass a folder (it is created if missing)"
        )
    return path


def config_from_args(args: argparse.Namespace, trains: bool) -> Any:
    """The run's ``PrecomputeConfig``, as ``precompute`` and ``train`` both build it."""
    from pipelines.run_config import PrecomputeConfig

    return PrecomputeConfig(
        dataset=args.dataset,
        model=args.model,
        weights=args.weights,
        samples=args.samples,
        subsets=tuple(args.subsets),
        perplexities=tuple(args.perplexities) if args.perplexities is not None else None,
        device=args.device,
        batch_size=args.batch_size,
        seed=args.seed,
        input_size=args.input_size,
        explain=None if args.explain is None else tuple(args.explain),
        folds=args.folds,
        quality_layer=args.quality_layer,
        training=training_from_args(args, trains),
    )


def precompute_command(args: argparse.Namespace) -> None:
    remote = None
    if args.workers == "celery":
        # Checked first: a missing or unreachable Redis is reported before any work starts.
        from pipelines.precompute_celery import CeleryUnits, redis_url_from_env

        remote = CeleryUnits(redis_url_from_env())
    from pipelines.precompute import Precompute

    config = config_from_args(args, trains=False)
    store = Precompute(
        config, args.data_dir, args.run_id, remote=remote, maps_first=args.maps_first
    ).run()
    print_summary(store.read_record(), store.run_dir)


class EpochTable:
    """Prints the per-epoch table on stdout as the curves grow (``on_training_point``)."""

    def __init__(self) -> None:
        self.printed = 0

    def __call__(self, curves: Any) -> None:
        from pipelines.training import epoch_table_header, epoch_table_row

        points = curves.epoch_points()
        if self.printed == 0 and points:
            print(epoch_table_header(), flush=True)
        for point in points[self.printed :]:
            print(epoch_table_row(point), flush=True)
        self.printed = len(points)
        if curves.state == "stopped early":
            print(f"stopped early; kept the weights of epoch {curves.best_epoch}", flush=True)


def train_command(args: argparse.Namespace) -> None:
    """Train the run's model (its model stage), printing a row per epoch; with
    ``--then-precompute`` go on with the rest of the run."""
    from pipelines.precompute import Precompute
    from pipelines.training import TrainingCurves, summary_text

    config = config_from_args(args, trains=True)
    precompute = Precompute(
        config,
        args.data_dir,
        args.run_id,
        on_training_point=EpochTable(),
        until=None if args.then_precompute else "model",
        maps_first=args.maps_first,
    )
    store = precompute.run()
    record = store.read_record()
    if args.then_precompute:
        print_summary(record, store.run_dir)
        return
    trained = ""
    if store.has("training_curves"):
        trained = summary_text(TrainingCurves.from_json(store.load_json("training_curves")))
    from pipelines.run_config import precompute_command as resume_command

    print(
        f"run '{record.run_id}': model trained{': ' + trained if trained else ''}\n"
        f"  in {store.run_dir}\n  the other stages are pending; complete the run with:\n  "
        + resume_command(record.require_config().identity, record.run_id, args.data_dir)
    )


def accuracy_text(manifest: Manifest) -> str:
    """'held-out 98.6% (360) · train 99.9% (1,437)'; old runs say their number is over all rows."""
    by_split = manifest.accuracy_by_split
    if by_split is None:
        accuracy = manifest.accuracy
        return (
            "-"
            if accuracy is None
            else f"{accuracy:.1%} over all rows (computed before held-out accuracy)"
        )
    parts = []
    for name in ("held-out", "train"):
        split = by_split.get(name)
        if split and split.samples:
            value = split.accuracy
            shown = "unknown (classes not mapped)" if value is None else f"{value:.1%}"
            parts.append(f"{name} {shown} ({split.samples:,} samples)")
    return " · ".join(parts) or "-"


def print_summary(record: Manifest, run_dir: Path) -> None:
    stages = ", ".join(f"{name} {stage.seconds or 0:.1f}s" for name, stage in record.stages.items())
    print(
        f"run '{record.run_id}' complete: {record.require_dataset().num_samples} samples, "
        f"{len(record.layers)} layers, accuracy {accuracy_text(record)}\n"
        f"  stages: {stages}\n  in {run_dir}\n"
        "  explore it with: python main.py serve"
        + (
            f" --data-dir {run_dir.parent.parent}"
            if run_dir.parent.parent != DEFAULT_DATA_DIR
            else ""
        )
    )


def iter_stage_states(manifest: Manifest) -> Iterator[tuple[str, str]]:
    """(stage, "done" | "pending" | "running 3/14") per stage, in the order they run."""
    from pipelines.stages import STAGES

    for name in STAGES:
        stage = manifest.stage(name)
        state = stage.state
        if state != "done" and stage.total:
            state = f"{state} {stage.done or 0}/{stage.total}"
        yield name, state


def quality_text(manifest: dict) -> str:
    """The quality stage's line of `runs`, empty until the stage is done."""
    from pipelines.quality import recorded_info

    info = recorded_info(manifest)
    if info is None:
        return ""
    return (
        f"\n  label issues: {info.label_issues:,} flagged, ranked on {info.probabilities}"
        f"\n  neighbours: {info.neighbours} per sample in {info.layer} ({info.neighbour_index})"
    )


def training_text(store: Any) -> str:
    """`runs`' training line, for a run that trained its model (while it trains too)."""
    if not store.has("training_curves"):
        return ""
    from pipelines.training import TrainingCurves, summary_text

    try:
        curves = TrainingCurves.from_json(store.load_json("training_curves"))
    except (OSError, ValueError, TypeError) as exc:
        return f"\n  training: unreadable curves ({exc})"
    return f"\n  training: {summary_text(curves)}"


def runs_command(args: argparse.Namespace) -> None:
    from pipelines.run_config import stored_methods
    from pipelines.store import RunStore, list_run_dirs

    run_dirs = list_run_dirs(args.data_dir)
    if not run_dirs:
        print(
            f"no runs in {args.data_dir}; make one with: python main.py precompute --dataset digits --model smallcnn"
        )
    for run_dir in run_dirs:
        store = RunStore(run_dir)
        try:
            record = store.read_record()
        except UserError as exc:
            print(f"{run_dir.name}: unreadable ({exc})")
            continue
        config = record.require_config()
        samples = record.dataset.num_samples if record.dataset else "?"
        states = "  ".join(f"{name}: {state}" for name, state in iter_stage_states(record))
        explanations = ", ".join(stored_methods(config))
        if store.is_being_written():
            status = "  [being written now]"
        elif record.failure:
            status = f"\n  FAILED: {record.failure.error}"
        else:
            status = ""
        print(
            f"{run_dir.name}\n  {config.dataset} x {config.model}, {samples} samples, "
            f"accuracy {accuracy_text(record)}{status}\n  {states}\n"
            f"  explanations stored: {explanations}\n"
            f"  layers: {', '.join(layer.id for layer in record.layers)}"
            + training_text(store)
            + quality_text(dict(record.raw))
        )
    jobs_text = jobs_section(args.data_dir)
    if jobs_text:
        print(jobs_text)


def jobs_section(data_dir: Path) -> str:
    """The jobs started from the page, newest first: id, state, title, run, and the line that
    says why a job failed or what happened to it; empty when there are none."""
    from pipelines.job_queue import list_jobs

    jobs = list_jobs(data_dir)
    if not jobs:
        return ""
    lines = ["jobs (newest first):"]
    for job in jobs:
        run = f" -> run {job.run_id}" if job.run_id else ""
        lines.append(f"  {job.id}  {job.state:<9}  {job.title}{run}")
        if job.error:
            lines.append(f"    {job.error}")
        if job.note:
            lines.append(f"    note: {job.note}")
    return "\n".join(lines)


def load_plugins(directory: Path | None) -> None:
    """Import the user's explanation methods before anything reads the registry (the
    dashboard's method list, ``--explain``'s check, ``explain``'s default methods)."""
    if directory is not None:
        from pipelines.explain.plugins import load_plugins as load

        load(directory)


def main(argv: list[str] | None = None) -> int:
    report.install()  # library warnings too print as one `warning: …` line, clear of the bars
    argv = list(sys.argv[1:] if argv is None else argv)
    # `python main.py [serve's options]`: serve, building the embedded default run if needed.
    build_default = not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help"))
    command = "serve" if build_default else argv[0]
    try:
        args = build_parser().parse_args(["serve", *argv] if build_default else argv)
        load_plugins(getattr(args, "plugins", None))
        if args.command == "precompute":
            precompute_command(args)
        elif args.command == "train":
            train_command(args)
        elif args.command == "runs":
            runs_command(args)
        elif args.command == "explain":
            from cli_explain import explain_command

            explain_command(args)
        elif args.command == "export":
            from cli_export import export_command

            export_command(args)
        elif args.command == "figure":
            from cli_figure import figure_command

            figure_command(args)
        else:
            from cli_serve import serve_command

            serve_command(args, build_default=build_default)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        # On the way out (the precompute's workers are stopped already): a second Ctrl-C must
        # not turn this message or the interpreter's exit into a traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if command == "explain":
            message = "interrupted; the PNGs written so far are complete, the rest were not begun"
        elif command == "export":
            message = "interrupted; each file is either complete or not written"
        else:
            message = "interrupted; run the same command again to resume where it stopped"
        print(f"\n{message}", file=sys.stderr)
        return 130
    return 0
