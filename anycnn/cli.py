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
130 interrupted.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import shlex
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DIVERGED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class UsageError(ValueError):
    """A mistake in the command line or its inputs (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``anycnn train: error: ...``) and exit status 2."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
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
    from anycnn.models import MODELS
    from anycnn.optim import OPTIMIZERS

    parser = _Parser(
        prog="anycnn",
        description="Classic CNNs after Bouvrie's 2006 notes, on "
        "NumPy/SciPy (CPU), CuPy (CUDA) or any Array API namespace.",
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
    )
    p.add_argument("--model", choices=sorted(MODELS), default="lenet5")
    p.add_argument(
        "--dataset",
        default="mnist",
        help="mnist, fashion-mnist, or a directory with the four IDX files",
    )
    p.add_argument("--data-dir", default=None, help="where to look for a named data set first")
    p.add_argument("--backend", default="auto", help="auto, cpu, cuda, numpy, cupy, torch, ...")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p.add_argument("--epochs", type=_positive_int, default=None)
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="1 is online learning (one pattern per update)",
    )
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default=None)
    p.add_argument(
        "--lr",
        type=_rate,
        default=None,
        help="global learning rate (SDLM: epsilon; with --schedule lecun, its first value)",
    )
    p.add_argument(
        "--schedule",
        choices=["constant", "step", "lecun"],
        default=None,
        help="learning-rate schedule by epoch; lecun: LeCun et al. 1998's",
    )
    p.add_argument(
        "--step-every",
        type=_positive_int,
        default=None,
        help="--schedule step: epochs between two decays (lenet5: 4)",
    )
    p.add_argument(
        "--gamma", type=_rate, default=None, help="--schedule step: decay factor (default 0.5)"
    )
    p.add_argument("--momentum", type=_rate, default=None)
    p.add_argument(
        "--layer-rate",
        type=_layer_rate,
        action="append",
        default=[],
        metavar="LAYER=MULT",
        help="per-layer rate multiplier, e.g. conv1=0.5 (repeatable)",
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--limit",
        type=_positive_int,
        default=None,
        help="use only the first N training and test examples",
    )
    p.add_argument("--checkpoint-dir", default=None)
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in --checkpoint-dir",
    )
    p.add_argument("--metrics", default=None, metavar="FILE.json")
    p.add_argument(
        "--plots",
        default=None,
        metavar="DIR",
        help="write learning curves, kernels and feature maps as PNG (needs matplotlib)",
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

    e = sub.add_parser("evaluate", help="test error of a checkpoint")
    e.add_argument("checkpoint")
    e.add_argument("--dataset", default=None, help="default: the one it was trained on")
    e.add_argument("--data-dir", default=None)
    e.add_argument("--backend", default="auto")
    e.add_argument("--limit", type=_positive_int, default=None)
    _common(e)

    g = sub.add_parser("gradcheck", help="check back-propagation by finite differences")
    g.add_argument("--model", choices=sorted(MODELS), default="lenet5")
    g.add_argument("--backend", default="cpu")
    g.add_argument("--batch", type=_positive_int, default=2)
    g.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument(
        "--tolerance",
        type=_rate,
        default=None,
        help="largest relative error that passes (1e-6 in float64, 1e-2 in float32)",
    )
    _common(g)

    b = sub.add_parser("backends", help="list the array backends and whether they are usable")
    _common(b)
    return parser


# --------------------------------------------------------------------------------------------
def _say(text: str, *, err: bool = False) -> None:
    print(text, file=sys.stderr if err else sys.stdout, flush=True)


def _backend(name: str) -> Any:
    from anycnn.backend import lookup

    return lookup(name).require()


def describe_device(backend: Any) -> str:
    """The backend and its device in words: ``numpy on cpu (2 cores)``, ``cupy on CUDA 0 (...)``."""
    device = backend.default_device
    text = f"{backend.name} on {device}"
    if str(device) == "cpu":
        machine = f", {platform.machine()}" if platform.machine() else ""
        text += f" ({os.cpu_count()} cores{machine})"
    else:
        properties = getattr(backend.xp, "cuda", None)
        try:
            name = properties.runtime.getDeviceProperties(device.id)["name"]  # type: ignore
            text += f" ({name.decode() if isinstance(name, bytes) else name})"
        except Exception:  # any namespace without CUDA properties: the device is enough
            pass
    return text


def _check_output(option: str, value: str | None, *, directory: bool) -> None:
    """Raise UsageError when an output path cannot be created: a file where a directory is
    needed (or the reverse), or a file on the way to it."""
    if value is None:
        return
    path = Path(value).expanduser()
    if path.exists() and path.is_dir() != directory:
        wanted = "a directory" if directory else "a file"
        found = "a file" if path.is_file() else "a directory"
        raise UsageError(f"anycnn train: {option} {value} is {found}; expected {wanted}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(
                    f"anycnn train: {option} {value}: {parent} is a file, not a directory"
                )
            break


def _train(args: argparse.Namespace) -> int:
    from anycnn import checkpoint as ckpt
    from anycnn import datasets, models, optim, train

    if args.resume and args.checkpoint_dir is None:
        raise UsageError("anycnn train: --resume needs --checkpoint-dir")
    # Output paths are checked before training, not discovered to be wrong after an epoch.
    _check_output("--checkpoint-dir", args.checkpoint_dir, directory=True)
    _check_output("--plots", args.plots, directory=True)
    _check_output("--metrics", args.metrics, directory=False)
    defaults = train.TRAINING_DEFAULTS.get(args.model, train.GENERIC_DEFAULTS)
    epochs = args.epochs or defaults["epochs"]
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

    from anycnn import distributed

    comm = distributed.init(args.distributed)
    backend = _backend(args.backend)
    backend = distributed.select_device(backend, comm)  # one GPU per process, by local rank
    dataset = datasets.load(args.dataset, data_dir=args.data_dir, limit=args.limit)
    options: dict[str, Any] = {"backend": backend, "dtype": args.dtype, "seed": args.seed}
    if args.loss is not None and args.model != "dlt":
        options["loss"] = args.loss
    net = models.build(args.model, **options)
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

    device = describe_device(backend)
    quiet = args.quiet or comm.rank != 0  # only rank 0 reports
    if not quiet:
        rate = f"lr {schedule!r}" if schedule_name != "constant" else f"lr {lr:g}"
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
    result = train.train(
        net,
        dataset,
        epochs=epochs,
        batch_size=batch_size,
        optimizer=opt,
        seed=args.seed,
        progress=not quiet and (sys.stderr.isatty() or bool(os.environ.get("ANYCNN_PROGRESS"))),
        checkpoint_dir=args.checkpoint_dir,
        resume=args.resume,
        metrics_path=args.metrics,
        callbacks=[report],
        run_info=run_info,
        distributed=comm,
    )
    if comm.rank != 0:
        return EXIT_OK
    if args.plots:
        from anycnn import plots

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
    return EXIT_OK


def _threads(backend: Any) -> int:
    """The threads of the NumPy backend's ops in this process (1 for other backends)."""
    if getattr(backend, "name", None) != "numpy":
        return 1
    from anycnn_numpy import _ops

    return _ops.get_num_threads()


def _evaluate(args: argparse.Namespace) -> int:
    from anycnn import checkpoint as ckpt
    from anycnn import datasets, train

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
    from anycnn import datasets, models, train
    from anycnn.gradcheck import gradcheck

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
    tolerance = (
        args.tolerance
        if args.tolerance is not None
        else (1e-6 if args.dtype == "float64" else 1e-2)
    )
    report = gradcheck(
        net,
        backend.asarray(x, dtype=args.dtype),
        backend.asarray(t, dtype=args.dtype),
        tolerance=tolerance,
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
    return EXIT_OK


COMMANDS = {"train": _train, "evaluate": _evaluate, "gradcheck": _gradcheck, "backends": _backends}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (``sys.exit(main())``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
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
    from anycnn.checkpoint import CheckpointError
    from anycnn.datasets import DatasetError
    from anycnn.train import DivergenceError

    try:
        return COMMANDS[args.command](args)
    except DivergenceError as error:
        # Detected collectively: every rank stops at the same batch; rank 0 reports.
        if debug:
            traceback.print_exc()
        if _world_rank() == 0:
            _say(f"error: {error}", err=True)
        return EXIT_DIVERGED
    except (UsageError, DatasetError, CheckpointError, BackendUnavailableError) as error:
        if debug:
            traceback.print_exc()
        return _fail(f"error: {_one_line(error)}", EXIT_USAGE)
    except ValueError as error:  # bad values caught by the library's own checks
        if debug:
            traceback.print_exc()
        return _fail(f"error: {_one_line(error)}", EXIT_USAGE)
    except OSError as error:  # a path given cannot be read or written (the message names it)
        if debug:
            traceback.print_exc()
        return _fail(f"error: {_one_line(error)}", EXIT_USAGE)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)


def _world_rank() -> int:
    from anycnn import distributed

    return distributed._world.rank if distributed._world is not None else 0


def _fail(message: str, code: int) -> int:
    """Report an error; in a job of several processes, name the rank and abort the whole job
    (the others may be waiting in a collective: nothing may hang)."""
    from anycnn import distributed

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
