"""`mrf train`: train a mapping network on EPG signals and write its TorchScript archive."""

from __future__ import annotations

import argparse


def _option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE, e.g. width=128")
    for cast in (int, float):
        try:
            return key, cast(value)
        except ValueError:
            pass
    return key, value


def register(sub) -> None:
    from_names = "mlp, resnet, gru, lstm, drone, hoppe"
    p = sub.add_parser(
        "train", help="train a T1/T2 mapping network (EPG signals) and write a TorchScript model",
        description="Train a network that maps MRF signals (subspace coefficients or time courses) to T1 and "
        "T2 (and B1) on EPG fingerprints at random continuous tissue parameters with PD-phase and noise "
        "augmentation, and write a TorchScript archive with its metadata. Options left out take the preset's "
        "value, then the built-in default. `mrf train --preset default --out mrf_core/data/default_model.pt` "
        "reproduces the shipped default model.",
    )
    p.add_argument("--preset", choices=("default", "b1-map"), default=None,
                   help="a named recipe (see mrf_core.mapping.training)")
    p.add_argument("--schedule", default=None, metavar="FILE", help="schedule file (default: Jiang 2015, 1000 TRs)")
    p.add_argument("--timepoints", type=int, default=None, metavar="N", help="use only the first N TRs")
    p.add_argument("--arch", default=None, help=f"architecture: {from_names} (default mlp)")
    p.add_argument("--input", dest="input_kind", choices=("coefficients", "magnitude", "complex"), default=None,
                   help="network input (default: the architecture's: coefficients for mlp, complex for resnet, "
                   "magnitude for the others)")
    p.add_argument("--rank", type=int, default=None, help="basis rank of a coefficient model (default 10)")
    p.add_argument("--option", dest="arch_options", action="append", type=_option, default=None, metavar="KEY=VALUE",
                   help="architecture option, repeatable: width, depth (mlp), hidden, step (gru/lstm), ...")
    p.add_argument("--n-train", type=int, default=None, help="training signals (default 100000)")
    p.add_argument("--n-val", type=int, default=None, help="validation signals (default 10000)")
    p.add_argument("--epochs", type=int, default=None, help="most epochs (default 50)")
    p.add_argument("--batch-size", type=int, default=None, help="default 256")
    p.add_argument("--lr", type=float, default=None, help="Adam learning rate (default 1e-3)")
    p.add_argument("--patience", type=int, default=None, help="early stopping patience in epochs (default 8)")
    noise = p.add_mutually_exclusive_group()
    noise.add_argument("--snr", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                       help="training SNR range per time point, mean |signal| / sigma (default 2 200)")
    noise.add_argument("--noiseless", action="store_true", help="train without noise")
    p.add_argument("--clean-fraction", type=float, default=None, help="noiseless share of each batch (default 0.05)")
    p.add_argument("--t1-range", type=float, nargs=2, default=None, metavar=("LO", "HI"), help="ms (default 10 5000)")
    p.add_argument("--t2-range", type=float, nargs=2, default=None, metavar=("LO", "HI"), help="ms (default 2 2000)")
    p.add_argument("--b1-range", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="also draw and predict B1 in this range (default: B1 = 1, not predicted)")
    p.add_argument("--b1-input", action="store_true",
                   help="take B1 (a B1 map's value) as an input beside the signal and predict T1/T2 only; needs "
                   "--b1-range")
    p.add_argument("--slice-profile", default=None, metavar="SPEC",
                   help="model the RF pulse's 2-D slice profile, e.g. hann-sinc:4 (each fingerprint the sum of 20 "
                   "sub-slices, 20x the simulation; stored in the metadata and checked against the scan's "
                   "slice_profile setting); default none (ideal)")
    p.add_argument("--distribution", choices=("log-uniform", "uniform"), default=None, help="default log-uniform")
    p.add_argument("--scaling", choices=("log", "linear"), default=None, help="output scaling (default log)")
    p.add_argument("--states", dest="n_states", type=int, default=None, help="EPG states (default 50)")
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.add_argument("--device", default=None, help="torch device (default: cuda if present, else cpu)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    p.add_argument("--table-nodes", type=int, default=None, help="fingerprint-table nodes per log axis (default 129)")
    p.add_argument("--basis-dictionary", default=None, metavar="FILE",
                   help="take the basis from this dictionary file (default: a 5 %% grid over the training ranges)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="wall-clock training budget in minutes (checked every 20 batches)")
    p.add_argument("--out", required=True, metavar="FILE", help="output model archive (.pt)")
    p.set_defaults(func=run)


def config_from_args(args):
    """TrainConfig from built-in defaults <- the preset <- the options given on the command line."""
    from mrf_core.mapping.parameters import ParameterSpace
    from mrf_core.mapping.training import PRESETS, TrainConfig
    from mrf_core.physics.slice_profile import SliceProfile

    values = dict(PRESETS[args.preset]) if args.preset else {}
    for key in ("arch", "input_kind", "rank", "n_train", "n_val", "epochs", "batch_size", "lr", "patience",
                "clean_fraction", "n_states", "seed", "device", "table_nodes", "basis_dictionary", "max_minutes"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    if args.arch_options:
        values["arch_options"] = dict(args.arch_options)
    if args.noiseless:
        values["snr_range"] = None
    elif args.snr is not None:
        values["snr_range"] = tuple(args.snr)
    space = dict(values.pop("space", {}))
    for key, attr in (("t1_range_ms", "t1_range"), ("t2_range_ms", "t2_range"), ("b1_range", "b1_range")):
        if getattr(args, attr) is not None:
            space[key] = tuple(getattr(args, attr))
    for key in ("distribution", "scaling"):
        if getattr(args, key) is not None:
            space[key] = getattr(args, key)
    values["space"] = ParameterSpace(**space)
    if args.b1_input:
        values["b1_input"] = True
    if args.slice_profile is not None:
        values["slice_profile"] = SliceProfile.parse(args.slice_profile)
    values["progress"] = not args.quiet
    return TrainConfig(**values)


def run(args) -> int:
    import torch

    from mrf_core.io.atomic import check_writable
    from mrf_core.mapping import load_model
    from mrf_core.mapping.training import train_model
    from mrf_core.physics.sequence import load_schedule

    check_writable(args.out)
    torch.set_num_threads(max(1, args.threads))
    schedule = load_schedule(args.schedule)
    if args.timepoints is not None:
        schedule = schedule.truncated(args.timepoints)
    config = config_from_args(args)
    print(f"{schedule.describe()}\ntraining {config.arch} on {config.input_kind}: {config.n_train} signals, "
          f"<= {config.epochs} epochs, SNR {config.snr_range or 'noiseless'}")
    _, metadata = train_model(schedule, config, args.out)
    training = metadata["training"]
    metrics = training["val_metrics"]
    print(f"{training['epochs_run']} epochs in {training['seconds']:.0f} s (best {training['best_epoch']}, "
          f"validation loss {training['best_val_loss']:.3g})")
    for name, m in metrics.items():
        print(f"  validation {name}: RMSE {m['rmse']:.4g}, MAE {m['mae']:.4g}, median relative error "
              f"{100 * m['median_rel_error']:.2f} %")
    print(f"written to {args.out}: {load_model(args.out).describe()}")
    return 0
