"""The quality stage's cost in a digits precompute, and how well it finds wrong labels.

    .venv/bin/python benchmarks/bench_quality.py                 # both parts
    .venv/bin/python benchmarks/bench_quality.py --fold-epochs 8 # the run's model's recipe

(a) Cost: ``python main.py precompute --dataset digits --model smallcnn`` on a fresh data dir
    (the smallcnn trained too), as a user runs it; the quality stage's seconds (k-fold training,
    neighbours, ranking) against the rest of the same command's wall time (in one run, so both
    parts see the same load on a shared machine). ``--pairs N`` also times the same command with
    the stage left out (the orchestrator's stage list without it), alternating with and without.
(b) Ranking: digits written as a folder dataset with 5% of the images filed under a wrong class
    (seeded), precomputed end to end (smallcnn trained on the wrong labels, as a user's would
    be); precision@k of the stored label-issue scores, k = the number of wrong labels.
    ``--subsets 100 --perplexities 10`` there: the maps do not touch the ranking.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipelines.label_issues import precision_at_k  # noqa: E402
from pipelines.quality import load_quality  # noqa: E402
from pipelines.store import RunStore, runs_dir  # noqa: E402

FLIPPED_FRACTION = 0.05


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, load {os.getloadavg()[0]:.1f}"


def precompute(
    data_dir: Path, run_id: str, *args: str, fold_epochs: int | None, quality: bool = True
) -> float:
    """The CLI in its own process, as a user runs it; wall seconds. ``fold_epochs``: another
    fold recipe; ``quality=False``: without the quality stage (both for comparison only, patched
    in before the CLI runs)."""
    command = [sys.executable]
    patches = []
    if fold_epochs is not None:
        patches.append(
            "import pipelines.folds as f, pipelines.stages.quality as q; "
            f"f.FOLD_EPOCHS = q.FOLD_EPOCHS = {fold_epochs}"
        )
    if not quality:
        patches.append("import pipelines.precompute as p; p.STAGES = p.STAGES[:-1]")
    if patches:
        command += [
            "-c",
            "; ".join(
                ["import sys", *patches, "sys.argv = ['main.py'] + sys.argv[1:]", "import cli"]
            )
            + "; sys.exit(cli.main())",
        ]
    else:
        command += ["main.py"]
    command += ["precompute", *args, "--data-dir", str(data_dir), "--run-id", run_id]
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def cost(work: Path, fold_epochs: int | None, pairs: int) -> None:
    for pair in range(pairs):
        without = work / f"without-{pair}"
        load = os.getloadavg()[0]
        wall = precompute(
            without, "cost", "--dataset", "digits", "--model", "smallcnn",
            fold_epochs=fold_epochs, quality=False,
        )  # fmt: skip
        stages = RunStore(runs_dir(without) / "cost").read_manifest()["stages"]
        print(
            f"without the quality stage (load {load:.1f}): whole command {wall:.1f} s; "
            + ", ".join(f"{name} {stage['seconds']:.1f} s" for name, stage in stages.items())
        )
        with_stage(work / f"with-{pair}", fold_epochs)
    if not pairs:
        with_stage(work / "with", fold_epochs)


def with_stage(data_dir: Path, fold_epochs: int | None) -> None:
    load = os.getloadavg()[0]
    wall = precompute(
        data_dir, "cost", "--dataset", "digits", "--model", "smallcnn", fold_epochs=fold_epochs
    )
    manifest = RunStore(runs_dir(data_dir) / "cost").read_manifest()
    stages = manifest["stages"]
    quality = stages["quality"]
    rest = wall - quality["seconds"]
    print(
        f"with the quality stage (load {load:.1f}): whole command {wall:.1f} s; "
        + ", ".join(f"{name} {stage['seconds']:.1f} s" for name, stage in stages.items())
    )
    print(
        f"quality stage {quality['seconds']:.1f} s (fold training {quality['fold_seconds']:.1f} s, "
        f"neighbours {quality['neighbour_seconds']:.2f} s, ranking {quality['rank_seconds']:.2f} s)"
        f" = {quality['seconds'] / rest:.1%} of the rest of the command ({rest:.1f} s)"
    )
    print(f"model training (the run's smallcnn): {stages['model']['seconds']:.1f} s")


def flipped_digits(root: Path, seed: int = 0) -> np.ndarray:
    """Digits as PNGs in one folder per class, FLIPPED_FRACTION of them in a wrong class's
    folder; returns the file names (``NNNN.png``) of the misfiled ones."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    n = len(digits.target)
    flipped = rng.choice(n, size=round(FLIPPED_FRACTION * n), replace=False)
    labels = digits.target.copy()
    labels[flipped] = (labels[flipped] + rng.integers(1, 10, size=len(flipped))) % 10
    for index, (image, label) in enumerate(zip(digits.images, labels, strict=True)):
        folder = root / f"digit_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (image * (255 / 16)).round().astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{index:04d}.png")
    return np.array([f"{index:04d}.png" for index in flipped])


def ranking(work: Path, fold_epochs: int | None) -> None:
    folder = work / "flipped"
    misfiled = set(flipped_digits(folder))
    data_dir = work / "ranking"
    wall = precompute(
        data_dir, "flipped", "--dataset", f"folder:{folder}", "--model", "smallcnn",
        "--subsets", "100", "--perplexities", "10", fold_epochs=fold_epochs,
    )  # fmt: skip
    store = RunStore(runs_dir(data_dir) / "flipped")
    quality = load_quality(store)
    assert quality is not None
    sources = store.load_json("samples")["source"]
    wrong = np.array([Path(source).name in misfiled for source in sources])
    split = np.array(store.load_json("samples")["model_split"])
    precision = precision_at_k(quality.label_issue_score, wrong)
    flagged = quality.is_label_issue
    print(
        f"flipped digits ({wrong.sum()} of {len(wrong)} misfiled; run {wall:.0f} s): "
        f"precision@{wrong.sum()} = {precision:.3f}; cleanlab flags {flagged.sum()} "
        f"({flagged[wrong].mean():.0%} of the misfiled, precision {wrong[flagged].mean():.2f})"
    )
    for name in ("train", "held-out"):
        rows = split == name
        print(
            f"  {name} rows: {rows.sum()}, misfiled {wrong[rows].sum()}, "
            f"precision@k {precision_at_k(quality.label_issue_score[rows], wrong[rows]):.3f}"
        )
    print(f"  probabilities: {quality.info.probabilities}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["cost", "ranking", "both"], default="both")
    parser.add_argument(
        "--fold-epochs", type=int, default=None, help="fold models' epochs (default: the stage's)"
    )
    parser.add_argument(
        "--pairs", type=int, default=0, help="also time the command without the stage, N times"
    )
    args = parser.parse_args()
    print(f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {machine()}")
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as work:
        if args.part in ("cost", "both"):
            cost(Path(work), args.fold_epochs, args.pairs)
        if args.part in ("ranking", "both"):
            ranking(Path(work), args.fold_epochs)


if __name__ == "__main__":
    main()
