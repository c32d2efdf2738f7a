"""The seed papers' tables, measured here and printed next to the published numbers.

    python benchmarks/seed_tables.py [--only a|b] [--minutes 3] [--n-test-a 8000] [--quick] [--threads 1]

(a) Song et al. (ISMRM 2019): the Jiang schedule truncated to 200 TRs, their grid (T1 1:10:5000, T2
    1:10:2000 ms, T2 <= T1), noiseless off-grid test signatures drawn uniformly over the grid's region (as
    dense as the grid); RMSE and R^2 of T1/T2 for the residual CNN, the default architecture (MLP on
    rank-16 coefficients) and time-domain exhaustive dictionary matching, and the time to map 80,000
    signatures (measured on --n-test-a and scaled linearly when that is fewer).
    Both networks train noiseless, on the same uniform distribution, with linear output scaling.
(b) Oksuz et al. (ISBI 2019): their grid's ranges (T1 2-4000, T2 1-500 ms, T2 < T1) with the 1000-TR Jiang
    schedule, 100k training and 5k test signals, log-uniform and off-grid, complex Gaussian noise at SNR
    --snr-b per time point (mean |signal| / sigma); the networks see magnitudes as in the paper (the default
    network: rank-5 coefficients), inner product matching uses the complex signal against their grid
    (114,400 atoms, subspace rank 10, exhaustive; its time-domain time measured on 500 signals). MAE ± std
    of |error| and RMSE ± std over 5 folds of 1000, ms per signal (batched mapping time / signals).

Networks are evaluated as they are (refine=0); the default network is also shown with the fingerprint-table
refinement that the product uses (mrf_core.mapping.refine). Every network trains for at most --minutes
wall-clock minutes (a budget far below the papers': state it
with the numbers) from the same fixed seed; trained models are cached in --cache (out/, not in git) and
reused when their recipe is unchanged. GRU/LSTM feed `--rnn-step` time points per recurrent step (1 = the
paper; the default 10 makes them trainable in minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from mrf_core.mapping import default_model_path, load_model
from mrf_core.mapping.matching import match
from mrf_core.mapping.parameters import ParameterSpace
from mrf_core.mapping.training import TrainConfig, TrainingSet, simulate_set, train_model
from mrf_core.physics.dictionary import Dictionary, build_dictionary, oksuz_grid, song_grid
from mrf_core.physics.sequence import default_schedule

PAPER_A = {"residual CNN": ("0.659", "0.491", "0.99999986", "0.99999963", "8.2 s"),
           "dictionary matching": ("-", "-", "-", "-", "464.1 s")}
PAPER_B = {  # Oksuz et al. Table 1: T1 MAE, T1 RMSE, T2 MAE, T2 RMSE (ms), time per signal
    "ANN (DRONE)": ("113.22 ± 39.59", "119.94 ± 46.48", "67.16 ± 54.71", "86.63 ± 103.36", "18 ms"),
    "1-D CNN": ("108.98 ± 27.42", "112.38 ± 47.79", "64.57 ± 53.09", "113.22 ± 39.59", "14 ms"),
    "inner product": ("212.13 ± 25.23", "213.83 ± 103.36", "163.14 ± 75.97", "83.60 ± 49.03", "127 ms"),
    "LSTM": ("107.89 ± 17.87", "109.36 ± 41.99", "62.20 ± 22.05", "81.11 ± 46.32", "15 ms"),
    "GRU": ("101.81 ± 17.17", "103.25 ± 39.15", "58.91 ± 14.21", "73.66 ± 34.39", "14 ms"),
}


# ---- shared helpers (bench_mapping.py uses them too) ------------------------------------------------------
def noisy(fingerprints: np.ndarray, snr: float | None, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(complex signals pd * fingerprint + noise, pd): random PD (0.5-2, any phase), SNR = mean |s| / sigma."""
    n = fingerprints.shape[0]
    pd = rng.uniform(0.5, 2.0, (n, 1)) * np.exp(1j * rng.uniform(-np.pi, np.pi, (n, 1)))
    s = (fingerprints * pd).astype(np.complex64)
    if snr is not None:
        sigma = np.abs(s).mean(axis=1, keepdims=True) / snr / np.sqrt(2)
        s += (sigma * (rng.normal(size=s.shape) + 1j * rng.normal(size=s.shape))).astype(np.complex64)
    return s, pd[:, 0].astype(np.complex64)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def train_cached(name: str, schedule, config: TrainConfig, cache: Path, data=None):
    """Train (or reuse the cached archive of the same recipe) and load the model."""
    path = cache / f"{name}.pt"
    recipe = {k: v for k, v in config.to_dict().items() if k not in ("progress", "device")}  # device: resolved
    if path.exists():
        stored = load_model(path).metadata["training"]
        same = (json.dumps(stored[k]) == json.dumps(v) for k, v in json.loads(json.dumps(recipe)).items()
                if k in stored)
        if all(same):  # a field the archive lacks is newer than it and was at its default then
            print(f"  {name}: cached {path}")
            return load_model(path)
    _, metadata = train_model(schedule, config, path, data=data)
    t = metadata["training"]
    print(f"  {name}: trained {t['epochs_run']} epochs in {t['seconds']:.0f} s, best val loss {t['best_val_loss']:.3g}")
    return load_model(path)


def errors(result, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return result.t1_ms - params[:, 0], result.t2_ms - params[:, 1]


def rmse(e: np.ndarray) -> float:
    return float(np.sqrt(np.nanmean(e**2)))


def r2(e: np.ndarray, truth: np.ndarray) -> float:
    return float(1 - np.nanmean(e**2) / np.var(truth))


def cached_dictionary(path: Path, schedule, grid, rank: int) -> Dictionary:
    if path.exists():
        d = Dictionary.load(path)
        if d.schedule.hash == schedule.hash and d.n_atoms == grid.n_atoms and d.basis.rank >= rank:
            return d
    d = build_dictionary(schedule, grid, n_states=50, rank=rank, progress=False)
    d.save(path)
    return d


# ---- (a) Song ---------------------------------------------------------------------------------------------
def song_setting(n_train: int, epochs: int, minutes: float | None):
    """(schedule, space, {name: TrainConfig}) of table (a); benchmarks/gpu_run.py trains the same."""
    schedule = default_schedule().truncated(200)
    space = ParameterSpace((1.0, 5000.0), (1.0, 2000.0), None, "uniform", "linear")
    budget = dict(n_val=2000, snr_range=None, clean_fraction=0.0, space=space, seed=0, progress=False,
                  max_minutes=minutes, patience=8)
    configs = {
        "residual CNN": TrainConfig(arch="resnet", input_kind="complex", n_train=n_train, epochs=epochs,
                                    batch_size=128, lr=1e-3, **budget),
        "default network (MLP)": TrainConfig(arch="mlp", input_kind="coefficients", rank=16, n_train=n_train,
                                             epochs=epochs, batch_size=256, lr=2e-3, **budget),
    }
    return schedule, space, configs


def table_a(args, cache: Path) -> None:
    schedule, space, configs = song_setting(args.n_train_a, args.epochs, args.minutes)
    print(f"(a) Song setting: {schedule.describe()}")
    rng = np.random.default_rng(2019)
    test = simulate_set(schedule, space, args.n_test_a, rng, None, n_states=50)
    params = test.params
    signals, _ = noisy(test.signals.numpy(), None, rng)
    rows = {}
    data = None
    for name, config in configs.items():
        if data is None:
            data = (simulate_set(schedule, space, config.n_train, np.random.default_rng(0), None, 50),
                    simulate_set(schedule, space, config.n_val, np.random.default_rng(1), None, 50))
        model = train_cached(f"song_{config.arch}", schedule, config, cache, data)
        result, seconds = timed(model.map_signals, signals, refine=0)
        rows[name] = (result, seconds, model.metadata["training"])
        if config.arch == "mlp":
            result, seconds = timed(model.map_signals, signals)
            rows[name + " + table refinement"] = (result, seconds, model.metadata["training"])
    d = cached_dictionary(cache / "song_dictionary.h5", schedule, song_grid(), rank=16)
    result, seconds = timed(match, d, signals, domain="time", search="exhaustive")
    rows["dictionary matching"] = (result, seconds, None)
    scale = 80_000 / args.n_test_a
    print(f"\n(a) {args.n_test_a} noiseless off-grid signatures (uniform over the grid's region), 200 TRs; "
          f"time for 80,000 = measured x {scale:g}")
    print("| method | T1 RMSE ms | T2 RMSE ms | T1 R^2 | T2 R^2 | 80k signatures | training "
          "| paper (T1/T2 RMSE, R^2, time) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (result, seconds, training) in rows.items():
        e1, e2 = errors(result, params)
        paper = PAPER_A.get(name, ("-",) * 5)
        trained = "-" if training is None else (f"{training['n_train'] // 1000}k x {training['epochs_run']} ep, "
                                                 f"{training['seconds'] / 60:.1f} min")
        print(f"| {name} | {rmse(e1):.3f} | {rmse(e2):.3f} | {r2(e1, params[:, 0]):.8f} | {r2(e2, params[:, 1]):.8f} "
              f"| {seconds * scale:.1f} s | {trained} | {paper[0]} / {paper[1]}, {paper[2]} / {paper[3]}, {paper[4]} |")


# ---- (b) Oksuz --------------------------------------------------------------------------------------------
def fold_figures(e: np.ndarray, folds: int = 5) -> tuple[float, float, float, float]:
    """(mean |e|, std |e|, mean of the per-fold RMSEs, their std) over `folds` folds."""
    a = np.abs(e)
    per_fold = [rmse(part) for part in np.array_split(e, folds)]
    return float(np.nanmean(a)), float(np.nanstd(a)), float(np.mean(per_fold)), float(np.std(per_fold))


def fold_stats(e: np.ndarray, folds: int = 5) -> tuple[str, str]:
    mae, mae_std, fold_rmse, fold_std = fold_figures(e, folds)
    return f"{mae:.2f} ± {mae_std:.2f}", f"{fold_rmse:.2f} ± {fold_std:.2f}"


def oksuz_setting(n_train: int, epochs: int, minutes: float | None, snr: float, rnn_step: int):
    """(schedule, space, {name: TrainConfig}) of table (b); benchmarks/gpu_run.py trains the same."""
    schedule = default_schedule()
    space = ParameterSpace((2.0, 4000.0), (1.0, 500.0), None, "log-uniform", "log")
    budget = dict(n_train=n_train, n_val=5000, epochs=epochs, snr_range=(snr, snr), clean_fraction=0.0,
                  space=space, seed=0, progress=False, max_minutes=minutes, patience=6, lr=1e-3)
    step = {"step": rnn_step}
    configs = {
        "ANN (DRONE)": TrainConfig(arch="drone", input_kind="magnitude", batch_size=256, **budget),
        "1-D CNN": TrainConfig(arch="hoppe", input_kind="magnitude", batch_size=256, **budget),
        "LSTM": TrainConfig(arch="lstm", input_kind="magnitude", batch_size=128, arch_options=step, **budget),
        "GRU": TrainConfig(arch="gru", input_kind="magnitude", batch_size=128, arch_options=step, **budget),
        "residual CNN": TrainConfig(arch="resnet", input_kind="magnitude", batch_size=128, **budget),
        "default network (MLP, rank 5)": TrainConfig(arch="mlp", input_kind="coefficients", rank=5, batch_size=512,
                                                     **{**budget, "lr": 2e-3}),
    }
    return schedule, space, configs


def table_b(args, cache: Path) -> None:
    snr = args.snr_b
    schedule, space, configs = oksuz_setting(args.n_train_b, args.epochs, args.minutes, snr, args.rnn_step)
    print(f"(b) Oksuz setting: {schedule.describe()}; SNR {snr:g}")
    t0 = time.perf_counter()
    data = (simulate_set(schedule, space, args.n_train_b, np.random.default_rng(0), None, 50, progress=True),
            simulate_set(schedule, space, 5000, np.random.default_rng(1), None, 50))
    print(f"  training signals simulated in {time.perf_counter() - t0:.0f} s")
    rng = np.random.default_rng(2019)
    test: TrainingSet = simulate_set(schedule, space, args.n_test_b, rng, None, n_states=50)
    params = test.params
    signals, _ = noisy(test.signals.numpy(), snr, rng)
    rows = {}
    d = cached_dictionary(cache / "oksuz_dictionary.h5", schedule, oksuz_grid(), rank=10)
    coefficients = d.basis.project(signals)
    result, seconds = timed(match, d, coefficients, domain="subspace", search="exhaustive")
    _, time_seconds = timed(match, d, signals[:500], domain="time", search="exhaustive")
    rows["inner product"] = (result, seconds, f"subspace rank 10 (time domain: {time_seconds / 500 * 1e3:.1f} ms)")
    for name, config in configs.items():
        model = train_cached(f"oksuz_{config.arch}", schedule, config, cache, data)
        result, seconds = timed(model.map_signals, signals, refine=0)
        t = model.metadata["training"]
        note = f"{t['n_train'] // 1000}k x {t['epochs_run']} ep, {t['seconds'] / 60:.1f} min"
        rows[name] = (result, seconds, note)
        if config.arch == "mlp":
            result, seconds = timed(model.map_signals, signals)
            rows[name + " + table refinement"] = (result, seconds, note)
    if args.default_model.exists():
        shipped = load_model(args.default_model)
        result, seconds = timed(shipped.map_coefficients, shipped.basis.project(signals), shipped.basis)
        rows["shipped default model (+ refinement)"] = (result, seconds, f"{args.default_model.name}, not "
                                                        "retrained (trained on T1 >= 10, T2 >= 2 ms)")
    print(f"\n(b) {args.n_test_b} test signals, log-uniform T1 2-4000 / T2 1-500 ms, SNR {snr:g}; "
          "measured | paper Table 1")
    print("| method | T1 MAE | T1 RMSE | T2 MAE | T2 RMSE | ms/signal | training / note | paper T1 MAE, T1 RMSE, "
          "T2 MAE, T2 RMSE, time |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (result, seconds, note) in rows.items():
        e1, e2 = errors(result, params)
        (mae1, rmse1), (mae2, rmse2) = fold_stats(e1), fold_stats(e2)
        paper = ", ".join(PAPER_B.get(name, ("-",)))
        print(f"| {name} | {mae1} | {rmse1} | {mae2} | {rmse2} | {seconds / len(params) * 1e3:.3f} | {note} "
              f"| {paper} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=("a", "b"), default=None)
    p.add_argument("--minutes", type=float, default=3.0, help="wall-clock training budget per network")
    p.add_argument("--epochs", type=int, default=100, help="most epochs per network (the budget usually ends first)")
    p.add_argument("--n-train-a", type=int, default=80_000)
    p.add_argument("--n-test-a", type=int, default=8000)
    p.add_argument("--n-train-b", type=int, default=100_000)
    p.add_argument("--n-test-b", type=int, default=5000)
    p.add_argument("--snr-b", type=float, default=5.0)
    p.add_argument("--rnn-step", type=int, default=10)
    p.add_argument("--quick", action="store_true", help="1 min per network, 20k training signals, 2k tests")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine: see README)")
    p.add_argument("--cache", type=Path, default=Path("out/seed_tables"))
    p.add_argument("--default-model", type=Path, default=default_model_path())
    args = p.parse_args()
    if args.quick:
        args.minutes, args.n_train_a, args.n_train_b, args.n_test_a, args.n_test_b = 1.0, 20_000, 20_000, 2000, 2000
    torch.set_num_threads(args.threads)
    args.cache.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    start = time.perf_counter()
    if args.only in (None, "a"):
        table_a(args, args.cache)
    if args.only in (None, "b"):
        table_b(args, args.cache)
    print(f"\ntotal {time.perf_counter() - start:.0f} s; load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
