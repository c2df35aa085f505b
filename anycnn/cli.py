"""The ``anycnn`` command: ``train``, ``evaluate``, ``gradcheck`` and ``backends``.

::

    anycnn train                                   # LeNet-5 on MNIST, the defaults below
    anycnn train --model dlt --epochs 1 --batch-size 50 --lr 1 --optimizer sgd --backend cpu
    anycnn train --backend cuda --epochs 20 --checkpoint-dir runs/lenet5 --metrics m.json
    anycnn train --checkpoint-dir runs/lenet5 --resume --epochs 20   # continue after a stop
    anycnn evaluate runs/lenet5/epoch-0020.npz
    anycnn gradcheck --model lenet5 --backend cpu
    anycnn backends

Exit status: 0 success; 1 a failed gradient check (or an unexpected error); 2 a usage error (an
unknown model, data set or backend, a data directory without the four IDX files, a bad learning
rate, a checkpoint of another model, labels out of range...), reported as one line on stderr
(``--debug`` adds the traceback); 3 training diverged (the message names the epoch and batch);
130 interrupted (the message says what was kept); 141 standard output closed early
(``anycnn train ... | head -1``), quietly, as a shell reports a tool stopped by SIGPIPE.

``--backend`` defaults to ``$ANYCNN_BACKEND``, else ``auto`` (CuPy where a GPU is usable, else
NumPy).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import logging
import math
import os
import shlex
import stat
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DIVERGED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_CLOSED_PIPE = 128 + 13  # what a shell reports for a tool ended by SIGPIPE


class UsageError(ValueError):
    """A mistake in the command line or its inputs (exit status 2).

    Examples
    --------
    >>> from anycnn.cli import UsageError, build_parser
    >>> try:
    ...     build_parser().parse_args(["train", "--epochs", "two"])
    ... except UsageError as error:
    ...     print(error)
    anycnn train: argument --epochs: not an integer: 'two' (see anycnn train --help)
    """


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``anycnn train: error: ...``) and exit status 2."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


class _Help(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            action.option_strings
            and "default" not in text
            and default is not None
            and default is not False
            and default != []
            and default != argparse.SUPPRESS
        ):
            text += " (default: %(default)s)"
        return text


BACKEND_HELP = (
    "auto, cpu, cuda, numpy, cupy, torch, strict... (default: $ANYCNN_BACKEND, else auto: "
    "CuPy where a GPU is usable, else NumPy; anycnn backends lists them)"
)


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _rate(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _probability(text: str) -> float:
    value = _rate(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _layer_rate(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected LAYER=MULTIPLIER, got {text!r}")
    return name.strip(), _rate(value)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")


def build_parser() -> argparse.ArgumentParser:
    """The ``anycnn`` command line's parser (its subcommands and their options); a mistake
    raises :class:`UsageError` instead of exiting.

    Examples
    --------
    >>> from anycnn.cli import build_parser
    >>> args = build_parser().parse_args(["train", "--model", "dlt", "--epochs", "2"])
    >>> args.command, args.model, args.epochs
    ('train', 'dlt', 2)
    """
    from anycnn.models import MODELS
    from anycnn.training.optim import OPTIMIZERS

    parser = _Parser(
        prog="anycnn",
        description="Classic CNNs after Bouvrie's 2006 notes, on "
        "NumPy/SciPy (CPU), CuPy (CUDA) or any Array API namespace.",
        formatter_class=_Help,
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser(
        "train",
        help="train a model and report per-epoch errors",
        description="Train a zoo model. Options left out take the model's "
        "defaults (lenet5: momentum 0.9, lr 0.02 halved every 4 epochs, batch "
        "32, 2 epochs; dlt: SGD, lr 1, batch 50, 1 epoch). Another --optimizer "
        "starts from its own default rate: "
        + "; ".join(
            f"{name} lr {cls.default_lr:g}"
            + (" with LeCun's schedule" if cls.default_schedule == "lecun" else "")
            for name, cls in OPTIMIZERS.items()
        )
        + " (momentum 0.9; sdlm mu 0.02).",
        formatter_class=_Help,
    )
    p.add_argument(
        "--model",
        choices=sorted(MODELS),
        default=None,
        help="the zoo model (default: cnn1d_global for a UCR time-series data set, sized for it; "
        "else lenet5)",
    )
    p.add_argument(
        "--dataset",
        default="mnist",
        help="mnist, fashion-mnist, a directory with the four IDX files (anycnn download "
        "fetches fashion-mnist); or UCR time series: gunpoint, arrowhead, osuleaf, or a "
        "directory with <Name>_TRAIN.ts and <Name>_TEST.ts",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        metavar="DIR",
        help="where to look for a named data set first (default: $ANYCNN_DATA, then the "
        "places anycnn download writes to)",
    )
    p.add_argument("--backend", default=None, help=BACKEND_HELP)
    p.add_argument(
        "--dtype", choices=["float32", "float64"], default="float32", help="parameter dtype"
    )
    p.add_argument(
        "--epochs",
        type=_positive_int,
        default=None,
        help="passes over the training set (default: the model's, lenet5 2, dlt 1, cnn1d 300, "
        "cnn1d_global as many as make 8,000 updates)",
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="patterns per update; 1 is online learning (default: the model's, lenet5 32, dlt 50)",
    )
    p.add_argument(
        "--optimizer",
        choices=sorted(OPTIMIZERS),
        default=None,
        help="the update rule (default: the model's, lenet5 momentum, dlt sgd)",
    )
    p.add_argument(
        "--lr",
        type=_rate,
        default=None,
        help="global learning rate (SDLM: epsilon; with --schedule lecun, its first value) "
        "(default: the model's, see above)",
    )
    p.add_argument(
        "--schedule",
        choices=["constant", "step", "lecun"],
        default=None,
        help="learning-rate schedule by epoch; lecun: LeCun et al. 1998's (default: the "
        "model's, lenet5 step, dlt constant; sdlm lecun)",
    )
    p.add_argument(
        "--step-every",
        type=_positive_int,
        default=None,
        help="--schedule step: epochs between two decays (default: 4)",
    )
    p.add_argument(
        "--gamma", type=_rate, default=None, help="--schedule step: decay factor (default: 0.5)"
    )
    p.add_argument(
        "--momentum",
        type=_rate,
        default=None,
        help="momentum coefficient in [0, 1) (default: 0.9 with --optimizer momentum)",
    )
    p.add_argument(
        "--layer-rate",
        type=_layer_rate,
        action="append",
        default=[],
        metavar="LAYER=MULT",
        help="per-layer rate multiplier, e.g. conv1=0.5 (repeatable; default: 1 for every layer)",
    )
    p.add_argument(
        "--augment-shift",
        type=_fraction,
        default=None,
        metavar="FRACTION",
        help="shift each training example by a random whole number of samples up to FRACTION "
        "of its length along its last axis, edge-filled, every pass (0: none; default: the "
        "model's, cnn1d_global 0.1, others 0)",
    )
    p.add_argument(
        "--augment-reverse",
        type=_probability,
        default=None,
        metavar="P",
        help="read each training example backwards along its last axis with probability P "
        "every pass, before its shift (a series tracing an outline becomes its mirror "
        "image's; 0: never; default: the model's, cnn1d_global 0.5, others 0)",
    )
    p.add_argument("--mu", type=_rate, default=0.02, help="SDLM damping (LeCun: 0.02)")
    p.add_argument(
        "--hessian-samples",
        type=_positive_int,
        default=500,
        help="SDLM: patterns used to estimate the curvature before each epoch",
    )
    p.add_argument(
        "--loss",
        choices=["cross_entropy", "squared_error"],
        default=None,
        help="lenet5 only (default cross_entropy); dlt uses squared_error",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="initial weights and the order of the patterns"
    )
    p.add_argument(
        "--limit",
        type=_positive_int,
        default=None,
        help="use only the first N training and test examples (default: all)",
    )
    p.add_argument(
        "--checkpoint-dir",
        default=None,
        metavar="DIR",
        help="keep a checkpoint after every epoch there (default: none, nothing is kept)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in --checkpoint-dir, with its settings",
    )
    p.add_argument(
        "--metrics",
        default=None,
        metavar="FILE.json",
        help="write the per-epoch figures and the run's settings there (default: none)",
    )
    p.add_argument(
        "--plots",
        default=None,
        metavar="DIR",
        help="write learning curves, kernels and feature maps as PNG (needs matplotlib: "
        'pip install "anycnn[plot]"; default: none)',
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    p.add_argument(
        "--distributed",
        nargs="?",
        const="mpi",
        default="auto",
        choices=["auto", "mpi", "single"],
        help="data-parallel engine: auto (MPI when started by mpiexec), mpi (the same as "
        "--distributed alone) or single; --batch-size is then the global batch",
    )
    _common(p)

    e = sub.add_parser("evaluate", help="test error of a checkpoint", formatter_class=_Help)
    e.add_argument("checkpoint", help="an .npz file written by anycnn train --checkpoint-dir")
    e.add_argument(
        "--dataset", default=None, help="a data set name or directory (default: the training one)"
    )
    e.add_argument(
        "--data-dir", default=None, metavar="DIR", help="as for train (default: $ANYCNN_DATA...)"
    )
    e.add_argument("--backend", default=None, help=BACKEND_HELP)
    e.add_argument(
        "--limit",
        type=_positive_int,
        default=None,
        help="use only the first N test examples (default: all)",
    )
    _common(e)

    g = sub.add_parser(
        "gradcheck", help="check back-propagation by finite differences", formatter_class=_Help
    )
    g.add_argument("--model", choices=sorted(MODELS), default="lenet5", help="the zoo model")
    g.add_argument("--backend", default=None, help=BACKEND_HELP)
    g.add_argument("--batch", type=_positive_int, default=2, help="patterns in the checked batch")
    g.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        default="float64",
        help="the back-propagation's dtype; differences are always taken in float64",
    )
    g.add_argument("--seed", type=int, default=0, help="weights, inputs and sampled entries")
    g.add_argument(
        "--tolerance",
        type=_rate,
        default=None,
        help="largest relative error that passes (default: 1e-6 in float64, 1e-4 in float32)",
    )
    _common(g)

    b = sub.add_parser(
        "backends",
        help="list the array backends and whether they are usable",
        formatter_class=_Help,
    )
    _common(b)

    d = sub.add_parser(
        "download",
        help="fetch a data set's four IDX files and verify their checksums",
        formatter_class=_Help,
        description="Download MNIST or Fashion-MNIST from their official locations, verify "
        "each file's MD5 against the published checksum, and write them where anycnn train "
        "finds them.",
    )
    d.add_argument("dataset", choices=["mnist", "fashion-mnist"], help="the data set")
    d.add_argument(
        "--to",
        default=None,
        metavar="DIR",
        help="the directory to write <DIR>/<name>/ in (default: $ANYCNN_DATA, else "
        "~/.local/share/anycnn, which anycnn train searches)",
    )
    d.add_argument(
        "--mirror",
        action="append",
        default=[],
        metavar="URL",
        help="a base URL to try before the official ones (repeatable; default: none)",
    )
    _common(d)
    return parser


# --------------------------------------------------------------------------------------------
def _say(text: str, *, err: bool = False) -> None:
    print(text, file=sys.stderr if err else sys.stdout, flush=True)


def _backend(name: str | None) -> Any:
    """The backend of ``--backend``, else of ``$ANYCNN_BACKEND``, else ``auto``; an error from
    the environment's choice says it came from there."""
    from anycnn.backend import BackendUnavailableError, lookup

    if name:
        return lookup(name).require()
    chosen = os.environ.get("ANYCNN_BACKEND", "").strip() or "auto"
    try:
        return lookup(chosen).require()
    except (BackendUnavailableError, ValueError) as error:
        if chosen == "auto":
            raise
        raise type(error)(f"ANYCNN_BACKEND={chosen!r}: {error}") from None


def _describe_schedule(schedule: Any) -> str:
    """A learning-rate schedule in words: ``lr 0.02, halved every 4 epochs``."""
    config = schedule.config()
    kind = config.get("name")
    if kind == "constant":
        return f"lr {config['lr']:g}"
    if kind == "step":
        gamma, every = config["gamma"], config["every"]
        change = "halved" if gamma == 0.5 else f"times {gamma:g}"
        epochs = "epoch" if every == 1 else f"{every} epochs"
        return f"lr {config['lr']:g}, {change} every {epochs}"
    if kind == "piecewise":
        steps = ", ".join(
            f"{rate:g} ({count} epoch{'s' if count != 1 else ''})"
            for rate, count in zip(config["rates"], config["epochs"], strict=True)
        )
        return f"lr {steps}, then {config['final']:g}"
    return f"lr {schedule!r}"


def describe_device(backend: Any) -> str:
    """The backend and its device in words: ``numpy on cpu (2 cores)``, ``cupy on CUDA 0 (...)``
    (:meth:`anycnn.Backend.describe`)."""
    return backend.describe()


def _check_writable(option: str, value: str | None, *, directory: bool) -> None:
    """Raise UsageError unless a file can be created where ``value`` (a directory, or a file's
    directory) is: probed by creating the missing directories and a temporary file there, then
    removing what the probe created."""
    if value is None:
        return
    path = Path(value).expanduser()
    target = path if directory else path.parent
    created: list[Path] = []
    try:
        missing = []
        probe = target
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        for folder in reversed(missing):
            folder.mkdir()
            created.append(folder)
        with tempfile.TemporaryFile(dir=target):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        raise UsageError(f"anycnn train: {option} {value}: cannot write there ({reason})") from None
    finally:
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()


def _check_output(option: str, value: str | None, *, directory: bool) -> None:
    """Raise UsageError when an output path cannot be created: a file where a directory is
    needed (or the reverse), a file on the way to it, or a place that cannot be written."""
    if value is None:
        return
    from anycnn.training.checkpoint import not_replaceable

    path = Path(value).expanduser()
    wanted = "a directory" if directory else "a regular file"
    if directory:
        # lstat, never open: a FIFO is named, not waited on; a symlink to a directory is fine.
        with contextlib.suppress(OSError):
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode) and path.is_dir():
                mode = stat.S_IFDIR
            if not stat.S_ISDIR(mode):
                why = not_replaceable(path) or "is a file"
                raise UsageError(f"anycnn train: {option} {value} {why}; expected {wanted}")
    else:
        reason = not_replaceable(path)
        if reason is not None:
            raise UsageError(f"anycnn train: {option} {value} {reason}; expected {wanted}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(
                    f"anycnn train: {option} {value}: {parent} is a file, not a directory"
                )
            break
    _check_writable(option, value, directory=directory)


def _train(args: argparse.Namespace) -> int:
    from anycnn import data as datasets
    from anycnn import models
    from anycnn.training import checkpoint as ckpt
    from anycnn.training import loop as train
    from anycnn.training import optim

    if args.resume and args.checkpoint_dir is None:
        raise UsageError("anycnn train: --resume needs --checkpoint-dir")
    # Output paths are checked before training, not discovered to be wrong after an epoch.
    _check_output("--checkpoint-dir", args.checkpoint_dir, directory=True)
    _check_output("--plots", args.plots, directory=True)
    _check_output("--metrics", args.metrics, directory=False)
    if args.plots is not None:
        from anycnn.training import plots

        plots.require_matplotlib()  # before training, not after it
    if args.model is None:  # time series get the 1-D model (issue 18), images LeNet-5
        ucr = importlib.import_module("anycnn.data.ucr")
        args.model = "cnn1d_global" if ucr.is_ucr(args.dataset) else "lenet5"
    defaults = train.TRAINING_DEFAULTS.get(args.model, train.GENERIC_DEFAULTS)
    batch_size = args.batch_size or defaults["batch_size"]
    kind = args.optimizer or defaults["optimizer"]
    same_kind = kind == defaults["optimizer"]
    optimizer_class = optim.OPTIMIZERS[kind]
    schedule_name = args.schedule or (
        defaults["schedule"] if same_kind else optimizer_class.default_schedule
    )
    lr = args.lr
    if lr is None:
        lr = defaults["lr"] if same_kind else optimizer_class.default_lr
    momentum = args.momentum
    if kind == "momentum" and momentum is None:
        momentum = defaults["momentum"] if same_kind and defaults["momentum"] else 0.9
    if kind == "sgd" and args.momentum:
        raise UsageError("anycnn train: --momentum needs --optimizer momentum (or sdlm)")
    if momentum is not None and momentum >= 1:
        raise UsageError(f"anycnn train: --momentum must be in [0, 1), got {momentum}")
    if args.model == "dlt" and args.loss not in (None, "squared_error"):
        raise UsageError("anycnn train: model dlt is trained with squared_error only")
    if schedule_name == "constant":
        schedule: Any = optim.Constant(lr)
    elif schedule_name == "step":
        every = args.step_every or (defaults["step_every"] if defaults["schedule"] == "step" else 4)
        gamma = (
            args.gamma
            if args.gamma is not None
            else (defaults["gamma"] if defaults["schedule"] == "step" else 0.5)
        )
        schedule = optim.Step(lr, every=every, gamma=gamma)
    else:
        schedule = optim.lecun1998(lr / optim.LECUN1998_RATES[0])

    from anycnn.training import distributed

    comm = distributed.init(args.distributed)
    backend = _backend(args.backend)
    backend = distributed.select_device(backend, comm)  # one GPU per process, by local rank
    _tune_process(backend)
    dataset = datasets.load(args.dataset, data_dir=args.data_dir, limit=args.limit)
    # cnn1d_global: its passes follow from a number of updates and the training set's size
    epochs = args.epochs or train.default_epochs(
        defaults, dataset.train_images.shape[0], batch_size
    )
    augment = _augmentation(args, defaults)
    options: dict[str, Any] = {"backend": backend, "dtype": args.dtype, "seed": args.seed}
    if args.loss is not None and args.model != "dlt":
        options["loss"] = args.loss
    net = models.build_for(dataset, args.model, **options)  # cnn1d: sized for the data set
    extra: dict[str, Any] = {}
    if kind == "sdlm":
        extra = {"mu": args.mu, "samples": args.hessian_samples}
    opt = optim.build_optimizer(
        kind, net, lr=schedule, momentum=momentum, layer_rates=dict(args.layer_rate), **extra
    )
    if args.checkpoint_dir and not args.resume and ckpt.latest_checkpoint(args.checkpoint_dir):
        raise UsageError(
            f"anycnn train: {args.checkpoint_dir} already holds checkpoints; pass --resume to "
            "continue from them, or choose another --checkpoint-dir"
        )
    if args.resume:
        _check_resume(args, net, dataset, batch_size, opt)

    device = describe_device(backend)
    quiet = args.quiet or comm.rank != 0  # only rank 0 reports
    if not quiet:
        rate = _describe_schedule(schedule)
        mom = f", momentum {momentum:g}" if momentum else ""
        _say(
            f"anycnn train: {args.model} on {dataset.name} "
            f"({dataset.train_images.shape[0]} train / {dataset.test_images.shape[0]} test), "
            f"backend {device}, {args.dtype}"
        )
        _say(
            f"  optimizer {kind}, {rate}{mom}, batch {batch_size}, {epochs} epoch(s), "
            f"seed {args.seed}"
        )
        if augment is not None:
            _say(
                f"  every pass shifts each example by up to {augment.fraction:.0%} of its length"
                + (f", reversed with probability {augment.reverse:g}" if augment.reverse else "")
            )
        if comm.size > 1:
            _say(
                f"  world: {comm.size} processes x {_threads(backend)} thread(s) "
                f"({comm.engine}), global batch {batch_size}"
            )

    if args.resume and not quiet:
        latest = ckpt.latest_checkpoint(args.checkpoint_dir)
        _say(
            f"  resuming from {latest}"
            if latest
            else f"  no checkpoint in {args.checkpoint_dir} yet: starting from scratch"
        )

    from tqdm.auto import tqdm

    def report(record: train.EpochRecord) -> None:
        if not quiet:
            tqdm.write(record.line(epochs) + f"  (eval {record.eval_seconds:.1f} s)")

    run_info = {
        "command": "anycnn " + " ".join(shlex.quote(a) for a in args.argv),
        "device_description": device,
        "cpu_count": os.cpu_count(),
        "threads": _threads(backend),
    }
    _warm_up(net, min(batch_size, dataset.train_images.shape[0]), quiet=quiet)
    try:
        result = train.train(
            net,
            dataset,
            epochs=epochs,
            batch_size=batch_size,
            optimizer=opt,
            seed=args.seed,
            limit=args.limit,  # already applied by datasets.load; passed to be recorded
            progress=not quiet and (sys.stderr.isatty() or bool(os.environ.get("ANYCNN_PROGRESS"))),
            checkpoint_dir=args.checkpoint_dir,
            resume=args.resume,
            metrics_path=args.metrics,
            callbacks=[report],
            run_info=run_info,
            distributed=comm,
            augment=augment,
        )
    except KeyboardInterrupt:
        if comm.size > 1:
            raise  # _run() aborts the whole job
        _say("interrupted: " + _kept(args, finished=False), err=True)
        return EXIT_INTERRUPTED
    if comm.rank != 0:
        return EXIT_OK
    if args.plots:
        from anycnn.training import plots

        x0 = result.preprocessing(dataset.test_images[:1], net.dtype_name)
        written = plots.save_plots(
            args.plots,
            network=net,
            history=result.history,
            example=net.backend.asarray(x0, dtype=net.dtype_name),
        )
        if not quiet:
            _say("plots: " + ", ".join(str(p) for p in written))
    final = result.history[-1] if result.history else None
    total = sum(r.seconds for r in result.history)
    if final is not None and final.test_error is not None:
        _say(
            f"test error {100 * final.test_error:.2f}% after {final.epoch} epoch(s); "
            f"training time {total:.1f} s ({device})"
        )
    if not quiet:
        _say(_kept(args, finished=True))
    return EXIT_OK


def _augmentation(args: argparse.Namespace, defaults: dict[str, Any]) -> Any:
    """The run's random shifts and reversals (``--augment-shift``, ``--augment-reverse``, else
    the model's defaults), or None."""
    from anycnn.data.augment import Shift

    fraction = args.augment_shift
    if fraction is None:
        fraction = defaults.get("augment_shift", 0.0)
    reverse = args.augment_reverse
    if reverse is None:
        reverse = defaults.get("augment_reverse", 0.0)
    return Shift(fraction, reverse) if fraction or reverse else None


def _kept(args: argparse.Namespace, *, finished: bool) -> str:
    """What a training run left on disk, in one line, with how to keep more."""
    from anycnn.training import checkpoint as ckpt

    kept = []
    if args.checkpoint_dir:
        latest = ckpt.latest_checkpoint(args.checkpoint_dir)
        if latest is not None:
            kept.append(
                f"checkpoints in {args.checkpoint_dir} (latest {latest.name}; continue with "
                "--resume, test with anycnn evaluate)"
            )
    if args.metrics and Path(args.metrics).expanduser().is_file():
        kept.append(f"metrics in {args.metrics}")
    if finished and args.plots:
        kept.append(f"plots in {args.plots}")
    if kept:
        return "kept: " + "; ".join(kept)
    hint = "--checkpoint-dir DIR keeps the network after every epoch"
    if finished:
        return f"nothing was kept on disk ({hint}, --metrics FILE.json the figures, --plots DIR)"
    return f"nothing was kept ({hint})"


def _check_resume(
    args: argparse.Namespace, net: Any, dataset: Any, batch_size: int, optimizer: Any
) -> None:
    """Compare a resumed run's settings with the checkpoint's (issue 13), each difference in
    the command line's words with the checkpoint's value: one the command line asked for
    (or a model or dtype, which cannot be resumed) is refused; one that comes from a default
    left out on resuming is said on stderr before training goes on."""
    from anycnn.training import checkpoint as ckpt

    latest = ckpt.latest_checkpoint(args.checkpoint_dir)
    if latest is None:
        return
    info = ckpt.read_info(latest)
    given = {a.split("=", 1)[0] for a in getattr(args, "argv", []) if a.startswith("--")}
    refused: list[str] = []
    noted: list[str] = []

    def compare(options: tuple[str, ...], text: str, stored: Any, current: Any) -> None:
        if stored is None or stored == current:
            return
        words = f"{text} {_setting(current)} (the checkpoint's: {_setting(stored)})"
        always = options[0] == "--dtype"  # it cannot be resumed
        (refused if always or given.intersection(options) else noted).append(words)

    stored_opt, current_opt = info.get("optimizer") or {}, optimizer.config()
    if info.get("model") != net.name or stored_opt.get("name") != current_opt.get("name"):
        return  # train() refuses another model or optimizer with its own message
    compare(("--dtype",), "--dtype", info.get("dtype"), net.dtype_name)
    compare(("--dataset", "--data-dir"), "--dataset", info.get("dataset"), dataset.name)
    # train() takes at most the whole training set per batch, and stores that
    size = int(dataset.train_images.shape[0])
    compare(("--batch-size",), "--batch-size", info.get("batch_size"), min(batch_size, size))
    for key, words, count in (
        ("train_size", "training", size),
        ("test_size", "test", int(dataset.test_images.shape[0])),
    ):
        if info.get(key) is not None and info[key] != count:
            text = f"--limit: {count} {words} images (the checkpoint's run had {info[key]})"
            (refused if "--limit" in given else noted).append(text)
    rate_options = ("--lr", "--schedule", "--step-every", "--gamma", "--optimizer")
    for key in sorted(set(stored_opt) | set(current_opt) if stored_opt else ()):
        options = {
            "name": ("--optimizer",),
            "lr": rate_options,
            "layer_rates": ("--layer-rate",),
        }.get(key, (f"--{key.replace('_', '-')}", "--optimizer"))
        text = {"lr": "--lr/--schedule"}.get(key, options[0])
        compare(options, text, stored_opt.get(key), current_opt.get(key))
    command = info.get("command")
    written = f"; it was written by: {command}" if command else ""
    if refused:
        raise UsageError(
            f"anycnn train: --resume from {latest} with other settings than it was written "
            f"with: {'; '.join(refused)}. Resume with the checkpoint's settings, or train "
            f"into another --checkpoint-dir{written}"
        )
    if noted:
        _say(
            f"note: resuming from {latest} with defaults other than its run's: "
            f"{'; '.join(noted)} (give them on the command line to keep the checkpoint's)",
            err=True,
        )


def _setting(value: Any) -> str:
    """An optimizer setting for a message: a schedule in words, a number as %g."""
    if isinstance(value, dict) and "name" in value:
        from anycnn.training import optim

        try:
            return _describe_schedule(optim.schedule_from_config(value))
        except Exception:  # an unknown schedule: its JSON is still readable
            return str(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _tune_process(backend: Any) -> None:
    """Process-wide settings a training run opts into, which the library never makes on its
    own (``Backend.tune_process``): for the NumPy backend, malloc keeping freed memory for the
    next step's temporaries (``Note [Fresh pages]`` in its plugin;
    ANYCNN_NUMPY_KEEP_FREED_MEMORY=0 declines it)."""
    tune = backend.base.tune_process
    if tune is not None:
        tune()


def _warm_up(net: Any, batch_size: int, *, quiet: bool) -> None:
    """Compile the NumPy backend's kernels before the first epoch's clock starts: one forward
    and backward pass on a zero batch (gradients only; parameters, optimizer and random state
    untouched). When that takes more than a second -- Numba compiling, the first time after an
    install -- say so while it happens (``Backend.compile_note``: what and where)."""
    note_of = net.backend.base.compile_note
    note = None if note_of is None else note_of()
    if note is None:
        return
    began = time.perf_counter()
    spoke = threading.Event()

    def announce() -> None:
        if quiet:
            return
        # A reader that went away (`| head -1`) is the main thread's to meet, at its next
        # write, and to end quietly (main()); here it would be a traceback from a thread.
        with contextlib.suppress(BrokenPipeError):
            _say(f"{note} ...")
        spoke.set()

    timer = threading.Timer(1.0, announce)
    timer.daemon = True
    timer.start()
    try:
        xp = net.backend.xp
        dtype = net.backend.asarray(np.zeros(1), dtype=net.dtype_name).dtype
        x = xp.zeros((batch_size, *net.input_shape), dtype=dtype)
        t = xp.zeros((batch_size, *net.output_shape), dtype=dtype)
        net.compute_gradients(x, t, check=False)
    finally:
        timer.cancel()
    if spoke.is_set():
        _say(f"  compiled in {time.perf_counter() - began:.1f} s")


def _threads(backend: Any) -> int:
    """The threads of the backend's ops in this process (1 where it does not say)."""
    return int(backend.thread_count())


def _evaluate(args: argparse.Namespace) -> int:
    from anycnn import data as datasets
    from anycnn.training import checkpoint as ckpt
    from anycnn.training import loop as train

    backend = _backend(args.backend)
    restored = ckpt.load_checkpoint(args.checkpoint, backend=backend)
    info = restored.info
    name = args.dataset or info.get("dataset") or "mnist"
    dataset = datasets.load(name, data_dir=args.data_dir, limit=args.limit)
    net = restored.network
    if info.get("preprocessing"):
        prep = train.Preprocessing.from_config(info["preprocessing"])
    else:
        prep = train.Preprocessing.fit(net, dataset.train_images)
    classes = net.output_shape[0]
    if int(dataset.test_labels.max(initial=0)) >= classes:
        raise UsageError(
            f"labels out of range: data set {dataset.name!r} has labels up to "
            f"{int(dataset.test_labels.max())} but model {net.name!r} has {classes} outputs"
        )
    began = time.perf_counter()
    result = train.evaluate(net, dataset.test_images, dataset.test_labels, prep)
    seconds = time.perf_counter() - began
    _say(
        f"{args.checkpoint}: {ckpt.printable(net.name)}, epoch {restored.epoch}, on "
        f"{dataset.name} "
        f"({result['count']} test images), backend {describe_device(backend)}"
    )
    _say(
        f"test error {100 * result['error']:.2f}% ({result['mistakes']}/{result['count']}), "
        f"mean loss {result['loss']:.4f}, {seconds:.1f} s"
    )
    return EXIT_OK


def _gradcheck(args: argparse.Namespace) -> int:
    from anycnn import data as datasets
    from anycnn import models
    from anycnn.gradcheck import gradcheck
    from anycnn.training import loop as train

    backend = _backend(args.backend)
    net = models.build(args.model, backend=backend, dtype=args.dtype, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.batch, *net.input_shape))
    low, high = train.target_values(net)
    t = datasets.one_hot(
        rng.integers(0, net.output_shape[0], args.batch),
        net.output_shape[0],
        low=low,
        high=high,
        dtype=args.dtype,
    )
    report = gradcheck(
        net,
        backend.asarray(x, dtype=args.dtype),
        backend.asarray(t, dtype=args.dtype),
        tolerance=args.tolerance,
    )
    _say(
        f"gradcheck: {args.model}, batch {args.batch}, {args.dtype}, backend "
        f"{describe_device(backend)}"
    )
    _say(str(report))
    return EXIT_OK if report.passed else EXIT_FAILED


def _backends(args: argparse.Namespace) -> int:
    from anycnn.backend import available_backends

    rows = [("name", "aliases", "available", "reason / description")]
    for record in available_backends():
        reason = record.description if record.available else record.unavailable_reason
        rows.append(
            (
                record.name,
                ", ".join(record.aliases) or "-",
                "yes" if record.available else "no",
                reason or "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        _say("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + "  " + row[3])
    for record in available_backends():
        if record.available and record.kernel_status is not None:
            _say(record.kernel_status())
    return EXIT_OK


def _download(args: argparse.Namespace) -> int:
    from anycnn.data.download import download

    try:
        folder = download(args.dataset, args.to, mirrors=args.mirror, say=_say)
    except OSError as error:  # the folder cannot be made (mirror failures are DownloadError)
        where = f"--to {args.to}" if args.to is not None else "the data folder"
        place = f"{error.filename} " if error.filename else ""
        reason = error.strerror or str(error)
        raise UsageError(
            f"anycnn download: {where}: cannot create the folder {place}({reason})"
        ) from None
    default = args.to is None and not os.environ.get("ANYCNN_DATA", "").strip()
    use = "" if default else f" --data-dir {shlex.quote(str(folder.parent))}"
    _say(
        f"{args.dataset} is in {folder}; train on it with: "
        f"anycnn train --dataset {args.dataset}{use}"
    )
    return EXIT_OK


COMMANDS = {
    "train": _train,
    "evaluate": _evaluate,
    "gradcheck": _gradcheck,
    "backends": _backends,
    "download": _download,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (``sys.exit(main())``).

    Examples
    --------
    >>> from anycnn.cli import main
    >>> main(["--version"])
    anycnn ...
    0
    >>> main(["trian"])        # a typo: one line on stderr, exit status 2
    2
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _main(argv)
    except BrokenPipeError:
        return _closed_pipe()


def _closed_pipe() -> int:
    """Standard output was closed by the reader (``| head -1``): stop quietly, as Unix tools
    do, and keep Python from complaining when it flushes stdout at exit."""
    with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return EXIT_CLOSED_PIPE


def _main(argv: list[str]) -> int:
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
    except UsageError as error:
        _say(f"error: {error}", err=True)
        return EXIT_USAGE
    if getattr(args, "version", False):
        from anycnn import __version__

        _say(f"anycnn {__version__}")
        return EXIT_OK
    if args.command is None:
        build_parser().print_help()
        return EXIT_USAGE
    args.argv = argv
    # The library's log (backend fallback and why, devices, compilation, threads) is silent in
    # a program; the command line shows it on stderr: its decisions (INFO) under the header of
    # `anycnn train`, everything with --debug, warnings always; nothing more with --quiet.
    log = logging.getLogger("anycnn")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("anycnn: %(message)s"))
    level = log.level
    quiet = getattr(args, "quiet", False)
    log.addHandler(handler)
    if debug:
        log.setLevel(logging.DEBUG)
    elif args.command == "train" and not quiet:
        log.setLevel(logging.INFO)
    else:
        log.setLevel(logging.WARNING)
    try:
        return _run(args, debug)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def _run(args: argparse.Namespace, debug: bool) -> int:
    from anycnn.backend import BackendUnavailableError
    from anycnn.data import DatasetError
    from anycnn.training.checkpoint import CheckpointError
    from anycnn.training.loop import DivergenceError
    from anycnn.training.plots import MatplotlibMissingError

    try:
        return COMMANDS[args.command](args)
    except DivergenceError as error:
        # Detected collectively: every rank stops at the same batch; rank 0 reports.
        if debug:
            traceback.print_exc()
        if _world_rank() == 0:
            _say(f"error: {error}", err=True)
        return EXIT_DIVERGED
    except (
        UsageError,
        DatasetError,
        CheckpointError,
        BackendUnavailableError,
        MatplotlibMissingError,
    ) as error:
        if debug:
            traceback.print_exc()
        return _fail(f"error: {_one_line(error)}", EXIT_USAGE)
    except ValueError as error:  # bad values caught by the library's own checks
        if debug:
            traceback.print_exc()
        return _fail(f"error: {_one_line(error)}", EXIT_USAGE)
    except BrokenPipeError:
        raise  # main() ends quietly
    except OSError as error:  # a path given cannot be read or written (the message names it)
        if debug:
            traceback.print_exc()
        return _fail(f"error: {_one_line(error)}", EXIT_USAGE)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)


def _world_rank() -> int:
    from anycnn.training import distributed

    return distributed._world.rank if distributed._world is not None else 0


def _fail(message: str, code: int) -> int:
    """Report an error; in a job of several processes, name the rank and abort the whole job
    (the others may be waiting in a collective: nothing may hang)."""
    from anycnn.training import distributed

    world = distributed._world
    if world is None or world.size == 1:
        _say(message, err=True)
        return code
    _say(f"anycnn: rank {world.rank} of {world.size}: {message}", err=True)
    world.abort(code)
    return code  # pragma: no cover - abort ends the process


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


__all__ = [
    "EXIT_DIVERGED",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "UsageError",
    "build_parser",
    "main",
]
