"""Issue 19 in one run on a GPU machine: the seed networks trained in their papers' settings on the device,
exported, evaluated beside the papers' figures, and the GPU reconstruction path timed beside the CPU.

    timeout 590 python benchmarks/gpu_run.py --out out/gpu_run --budget-s 480           # on the GPU machine
    python benchmarks/gpu_run.py --out /tmp/gpu_quick --device cpu --quick --budget-s 30  # smoke run, any CPU

--quick: tiny sizes (32/40 TRs, 256 training signals, 128 tests, a 17-node table, 48^2 slice with 4 coils and
4 llr iterations, 4 epochs): every stage in ~15 s on 2 CPU cores (tests/test_gpu_run.py). The papers' figures need
the full sizes on a GPU.

Stages (each guarded: a failure is recorded in figures.json under its name and the other stages still run;
each starts only when the budget left covers its minimum, else it is recorded as skipped):
  env          torch / CUDA / cupy / cufinufft / sigpy versions, the device
  song_data    Song et al. (ISMRM 2019): Jiang schedule truncated to 200 TRs, uniform T1 1-5000, T2 1-2000 ms
               (T2 <= T1), 80,100 noiseless training signatures (their grid's atom count), 2000 validation,
               8000 off-grid test signatures; simulated with the EPG on the device
  song_train   the residual CNN (seed_tables.song_setting), data on the device's EPG, --batch signatures per
               batch (lr scaled by sqrt(batch / paper batch), at most 3e-3), torch.autocast --amp-song on CUDA
               (fp32 on a CPU), Adam, plateau halving and early stopping as mrf_core.mapping.training does,
               at most its share of the budget (training shares: weights TRAIN_WEIGHTS over what is left
               after the evaluation and reconstruction reserves)
  oksuz_data   Oksuz et al. (ISBI 2019): 1000-TR Jiang schedule, log-uniform T1 2-4000, T2 1-500 ms, 100k
               training, 5000 validation, 5000 test signals, complex noise at SNR --snr (seed_tables' 5)
  oksuz_train  ANN (DRONE), 1-D CNN, LSTM, GRU (seed_tables.oksuz_setting) on magnitudes, one time point per
               recurrent step (the paper), --amp-oksuz; a network whose amp training fails is retried in fp32
  export       every archive written by the project's writer (mrf_core.mapping.archive, TorchScript) under
               OUT and loaded back with load_model; one of >= 16 MiB (--max-archive-mib; the residual CNN's
               3.8 M parameters and its 129^2 table make ~16.1 MiB) is written with float16 weights (input
               cast to float16, output back to float32), its accuracy measured beside the float32 one's
  song_eval    noiseless off-grid RMSE / R^2 of T1 and T2 of the exported archive (network output, refine=0;
               the float32 figures and the float16 loss beside when exported in float16), the time to map
               80,000 signatures (float32 weights) with MrfModel.map_signals on the device (network on the
               device, PD/score on the CPU) and the network's forward alone, and on the CPU (measured on 8000,
               scaled); warm-up calls first (TorchScript specialises on its second call, cuDNN plans)
  oksuz_eval   MAE mean +- std of |error| and RMSE mean +- std over 5 folds (seed_tables.fold_figures), ms per
               signal on the device and on the CPU; inner product matching (their 114,400-atom grid, rank-10
               subspace, exhaustive) on the device
  recon        the standard slice (NIST T1 plate at 3 T, 256^2, 1000 TRs, 16 coils, SNR 40; --quick: 48^2,
               4 coils, 4 iterations) simulated with mrf_core.sim, reconstructed with llr (rank 10: the
               default model's basis) on the CPU (finufft) and on the device (cufinufft when importable, else
               sigpy; on a CPU run: sigpy on the CPU), each mapped with the default model on its device;
               seconds per stage, map NRMSE against the phantom, and whether the device's maps agree with
               the CPU's (MAP_TOLERANCE: 99 % of the object's voxels within 1 % in T1 and T2; coefficients
               within 1e-2 relative); on a GPU the device run is repeated when the budget allows, the first
               (kernel compilation) kept as cold_*

Results (at most 8 files, each < 16 MiB): OUT/figures.json (rewritten after every stage, so a run cut short
still leaves its figures), OUT/<setting>_<arch>.pt (five archives), OUT/run.log (this output).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
from seed_tables import PAPER_A, PAPER_B, errors, fold_figures, noisy, oksuz_setting, r2, rmse, song_setting

from mrf_core.mapping import default_model_path, load_model
from mrf_core.mapping.archive import write_archive
from mrf_core.mapping.maps import map_nrmse
from mrf_core.mapping.matching import match
from mrf_core.mapping.training import TrainConfig, simulate_set, train_model
from mrf_core.physics.dictionary import build_dictionary, oksuz_grid, percent_grid

MAX_ARCHIVE_BYTES = 16 * 2**20
MAP_TOLERANCE = {"fraction": 0.99, "relative": 0.01}  # of object voxels / |device - cpu| / cpu, T1 and T2
COEFFICIENT_TOLERANCE = 1e-2  # ||c_device - c_cpu|| / ||c_cpu||: two NUFFT backends at eps 1e-4, 30 FISTA steps
TRAIN_WEIGHTS = {"residual CNN": 1.5, "ANN (DRONE)": 0.5, "1-D CNN": 0.8, "LSTM": 1.1, "GRU": 1.1}
SONG_NETWORKS = ("residual CNN",)
OKSUZ_NETWORKS = ("ANN (DRONE)", "1-D CNN", "LSTM", "GRU")
ARCHIVE_NAMES = {"residual CNN": "song_resnet", "ANN (DRONE)": "oksuz_drone", "1-D CNN": "oksuz_hoppe",
                 "LSTM": "oksuz_lstm", "GRU": "oksuz_gru"}
SONG_TRAIN_ATOMS = 80_100  # their grid: T1 1:10:5000, T2 1:10:2000 ms, T2 <= T1


# ---- sizes ------------------------------------------------------------------------------------------------
def sizes(quick: bool) -> dict:
    """Full: the papers' sizes. Quick: tiny (a CPU smoke run of every stage in well under a minute)."""
    if quick:
        return dict(song_trs=32, oksuz_trs=40, song_train=256, oksuz_train=256, n_val=64, song_test=128,
                    oksuz_test=128, cpu_signals=128, epochs=4, table_nodes=17, basis_step_pct=25.0,
                    matrix=48, coils=4, iterations=4, ip_grid_step_pct=25.0, reserve_eval_s=7.0,
                    reserve_recon_s=10.0, min_train_s=1.0)
    return dict(song_trs=None, oksuz_trs=None, song_train=SONG_TRAIN_ATOMS, oksuz_train=100_000, n_val=None,
                song_test=8000, oksuz_test=5000, cpu_signals=8000, epochs=200, table_nodes=None, basis_step_pct=None,
                matrix=256, coils=16, iterations=None, ip_grid_step_pct=None, reserve_eval_s=60.0,
                reserve_recon_s=120.0, min_train_s=15.0)


# ---- the run: budget, guarded stages, the JSON ----------------------------------------------------------------
class Run:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.scratch = Path(tempfile.mkdtemp(prefix="gpu_run_"))  # dictionaries, float32 archives: not returned
        self.started = time.perf_counter()
        self.figures: dict = {"issue": 19, "run": {"argv": sys.argv[1:], "budget_s": args.budget_s,
                                                     "device": args.device, "quick": args.quick},
                              "stages": {}, "song": {}, "oksuz": {}, "recon": {}}
        self.log = open(self.out / "run.log", "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def left(self) -> float:
        return self.args.budget_s - (time.perf_counter() - self.started)

    def say(self, text: str) -> None:
        line = f"[{time.perf_counter() - self.started:6.1f} s] {text}"
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def stage(self, name: str, minimum_s: float, fn, *args, **kwargs):
        """fn(*args) when the budget left covers minimum_s; its result, or None with the failure recorded."""
        record = self.figures["stages"].setdefault(name, {})
        left = self.left()
        if left < minimum_s:
            record.update(status="skipped", reason=f"budget: {left:.1f} s left, the stage needs >= {minimum_s:.1f} s")
            self.say(f"{name}: skipped ({record['reason']})")
            self.save()
            return None
        self.say(f"{name}: start ({left:.0f} s of the budget left)")
        begun = time.perf_counter()
        try:
            result = fn(*args, **kwargs)
            record["status"] = "ok"
        except Exception as exc:
            result = None
            record.update(status="error", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=6))
            self.say(f"{name}: FAILED {type(exc).__name__}: {exc}")
        record["seconds"] = round(time.perf_counter() - begun, 2)
        self.say(f"{name}: {record['status']} in {record['seconds']:.1f} s")
        self.save()
        return result

    def save(self) -> None:
        self.figures["run"]["elapsed_s"] = round(time.perf_counter() - self.started, 1)
        tmp = self.out / "figures.json.tmp"
        tmp.write_text(json.dumps(_plain(self.figures), indent=1, allow_nan=False))
        os.replace(tmp, self.out / "figures.json")

    def close(self) -> None:
        self.save()
        self.log.close()
        shutil.rmtree(self.scratch, ignore_errors=True)


def _plain(value):
    """JSON-safe: numpy scalars to Python, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def clock(device: str, fn, /, *args, warmups: int = 0, **kwargs):
    """(fn(*args), seconds) after `warmups` untimed calls of the same shapes (TorchScript's profiling executor
    specialises a graph on its second call; cuDNN and cupy compile on the first)."""
    for _ in range(warmups):
        fn(*args, **kwargs)
    synchronize(device)
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    synchronize(device)
    return out, time.perf_counter() - start


# ---- stages -------------------------------------------------------------------------------------------
def env(run: Run) -> None:
    info = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info.update(cuda=torch.version.cuda, gpu=torch.cuda.get_device_name(0),
                    gpu_memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1),
                    bf16_supported=torch.cuda.is_bf16_supported())
    for module in ("cupy", "cufinufft", "sigpy", "finufft", "numba", "scipy", "h5py"):
        try:
            info[module] = getattr(importlib.import_module(module), "__version__", "present")
        except Exception as exc:  # not installed, or no driver
            info[module] = f"unavailable ({type(exc).__name__})"
    run.figures["run"]["environment"] = info
    run.say(f"environment: {info}")


def train_config(run: Run, name: str, config: TrainConfig, size: dict, amp: str | None, share_s: float,
                 n_val: int) -> TrainConfig:
    """The paper's config on this run's device, batch, precision and time share."""
    batch = run.args.batch if run.args.batch else config.batch_size
    lr = min(config.lr * math.sqrt(batch / config.batch_size), max(config.lr, 3e-3))
    options = dict(device=run.args.device, batch_size=batch, lr=lr, amp=amp if run.args.device != "cpu" else None,
                   max_minutes=max(share_s, 1.0) / 60.0, epochs=size["epochs"], n_val=n_val, progress=False)
    if size["table_nodes"]:
        options.update(table_nodes=size["table_nodes"], basis_step_pct=size["basis_step_pct"])
    return dataclasses.replace(config, **options)


def train_share(run: Run, name: str, pending: list[str], size: dict) -> float:
    """Seconds for `name`: its weight's part of what is left after the later stages' reserves."""
    later_reserve = size["reserve_eval_s"] + size["reserve_recon_s"]
    if name in SONG_NETWORKS:  # the Oksuz data are still to simulate
        later_reserve += 0.05 * run.args.budget_s
    free = run.left() - later_reserve
    weights = sum(TRAIN_WEIGHTS[n] for n in pending)
    overhead = 0.5 if run.args.quick else 5.0  # basis, table and archive around the training loop
    return max(size["min_train_s"], free * TRAIN_WEIGHTS[name] / weights - overhead)


def train_one(run: Run, setting: dict, name: str, config: TrainConfig, size: dict, amp: str | None,
              pending: list[str]) -> dict:
    share = train_share(run, name, pending, size)
    path = run.scratch / f"{ARCHIVE_NAMES[name]}.fp32.pt"
    record = setting["networks"].setdefault(name, {"arch": config.arch, "input_kind": config.input_kind,
                                                   "paper": setting["paper"].get(name)})
    config = train_config(run, name, config, size, amp, share, setting["n_val"])
    run.say(f"  {name}: {share:.0f} s share, batch {config.batch_size}, lr {config.lr:.2g}, amp {config.amp}")
    try:
        module, metadata = train_model(setting["schedule"], config, path, data=setting["data"])
    except Exception as exc:
        if config.amp is None or run.left() < share + size["reserve_eval_s"] + size["reserve_recon_s"]:
            raise
        record["amp_failure"] = f"{type(exc).__name__}: {exc}"
        run.say(f"  {name}: amp {config.amp} failed ({exc}); again in fp32")
        config = dataclasses.replace(config, amp=None)
        module, metadata = train_model(setting["schedule"], config, path, data=setting["data"])
    t = metadata["training"]
    record["training"] = {k: t[k] for k in ("device", "amp", "n_train", "n_val", "batch_size", "lr", "epochs_run",
                                            "best_epoch", "best_val_loss", "final_train_loss", "seconds",
                                            "max_minutes", "val_metrics", "torch_threads", "history")}
    record["training"]["budget_share_s"] = round(share, 1)
    run.say(f"  {name}: {t['epochs_run']} epochs in {t['seconds']:.0f} s, best val loss {t['best_val_loss']:.3g}")
    setting["trained"][name] = (module, metadata, path)
    return record


class HalfWeights(torch.nn.Module):
    """A network kept in float16 (half the archive): input cast to float16, output back to float32."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network = network.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x.half()).float()


def export(run: Run, setting: dict) -> None:
    """Each trained network's archive under OUT, < 16 MiB (float16 weights when float32 is not)."""
    for name, (module, metadata, fp32_path) in setting["trained"].items():
        record = setting["networks"][name]
        target = run.out / f"{ARCHIVE_NAMES[name]}.pt"
        size = fp32_path.stat().st_size
        record["export"] = {"float32_mib": round(size / 2**20, 3)}
        if size < run.args.max_archive_mib * 2**20:
            shutil.copyfile(fp32_path, target)
            record["export"].update(weights="float32")
        else:
            module.network = HalfWeights(module.network)  # in place: the float32 archive stays in scratch
            meta = {**metadata, "export": {"weights": "float16", "reason": f"the float32 archive is {size / 2**20:.2f}"
                                           f" MiB, >= {run.args.max_archive_mib:g} MiB"}}
            write_archive(module, meta, target)
            record["export"].update(weights="float16", float32_archive="not returned (scratch)")
        record["archive"] = target.name
        record["archive_mib"] = round(target.stat().st_size / 2**20, 3)
        record["archive_under_16_mib"] = target.stat().st_size < MAX_ARCHIVE_BYTES
        load_model(target)  # the project's loader accepts it (ModelError otherwise)
        run.say(f"  {name}: {target.name} {record['archive_mib']:.2f} MiB ({record['export']['weights']})")


def _forward_seconds(model, signals: np.ndarray, device: str) -> float:
    """The scripted network alone on `device`, in the chunks MrfModel uses, inputs already there."""
    x = torch.as_tensor(signals)
    re, im = x.real.contiguous().to(device), x.imag.contiguous().to(device)
    with torch.no_grad():
        _, seconds = clock(device, lambda: [model.module(re[i : i + 16384], im[i : i + 16384])
                                            for i in range(0, re.shape[0], 16384)], warmups=2)
    return seconds


def _map_timings(run: Run, path: Path, signals: np.ndarray, n_cpu: int, n_target: int) -> dict:
    """Seconds to map n_target signals: on the device (all of them) and on the CPU (n_cpu, scaled)."""
    device = run.args.device
    out = {"note": "map_signals: the network on the device, PD and score (fingerprint table) on the CPU; "
                   "forward only: the scripted network with its inputs already on the device"}
    model = load_model(path, device=device)
    many = np.resize(signals, (n_target, signals.shape[1])) if device != "cpu" else signals[:n_cpu]
    model.map_signals(many[:16384], refine=0)  # warm-up: the chunk shape (twice: TorchScript profiles, then runs)
    _, seconds = clock(device, model.map_signals, many, refine=0, warmups=1)
    out["device_map_signals_s"] = seconds * n_target / many.shape[0]
    out["device_forward_only_s"] = _forward_seconds(model, many, device) * n_target / many.shape[0]
    out["device_measured_on"] = int(many.shape[0])
    out["cpu_threads"] = torch.get_num_threads()
    if device == "cpu":  # the device is the CPU: one measurement
        out["cpu_map_signals_s"], out["cpu_measured_on"] = out["device_map_signals_s"], out["device_measured_on"]
        return out
    cpu = load_model(path, device="cpu")
    few = signals[:n_cpu]
    _, seconds = clock("cpu", cpu.map_signals, few, refine=0, warmups=2)
    out["cpu_map_signals_s"] = seconds * n_target / few.shape[0]
    out["cpu_measured_on"] = int(few.shape[0])
    return out


def song_eval(run: Run, setting: dict, size: dict) -> None:
    test = setting["test"]
    params = test.params
    signals, _ = noisy(test.signals.numpy(), None, np.random.default_rng(2019))

    def figures(result):
        e1, e2 = errors(result, params)
        return {"t1_rmse_ms": rmse(e1), "t2_rmse_ms": rmse(e2), "t1_r2": r2(e1, params[:, 0]),
                "t2_r2": r2(e2, params[:, 1])}

    for name in SONG_NETWORKS:
        record = setting["networks"][name]
        try:
            device, fp32_path = run.args.device, setting["trained"][name][2]
            model = load_model(run.out / record["archive"], device=device)  # the exported archive
            result, seconds = clock(device, model.map_signals, signals, refine=0)
            record["figures"] = {**figures(result), "n_test": int(len(params)), "weights": record["export"]["weights"],
                                 "device_ms_per_signal_first_call": seconds / len(params) * 1e3}
            if record["export"]["weights"] == "float16":  # the accuracy the float16 export loses
                fp32 = figures(load_model(fp32_path, device=device).map_signals(signals, refine=0))
                record["figures_float32_weights"] = fp32
                record["float16_loss"] = {k: record["figures"][k] - fp32[k] for k in fp32}
            # time to map 80,000: the network as trained (float32 weights; float16 on a CPU is no speed figure)
            record["time_80k"] = _map_timings(run, fp32_path, signals, size["cpu_signals"], 80_000)
            record["time_80k"]["weights"] = "float32"
            paper = PAPER_A.get(name)
            record["paper"] = {"t1_rmse_ms": paper[0], "t2_rmse_ms": paper[1], "t1_r2": paper[2], "t2_r2": paper[3],
                               "time_80k": paper[4]} if paper else None
            f = record["figures"]
            run.say(f"  {name}: T1/T2 RMSE {f['t1_rmse_ms']:.3f}/{f['t2_rmse_ms']:.3f} ms (paper "
                    f"{paper[0]}/{paper[1]}), 80k: device {record['time_80k']['device_map_signals_s']:.2f} s, "
                    f"CPU {record['time_80k']['cpu_map_signals_s']:.2f} s (paper {paper[4]})")
        except Exception as exc:
            record["error"] = f"evaluation: {type(exc).__name__}: {exc}"
            run.say(f"  {name}: evaluation FAILED {exc}")


def _oksuz_figures(result, params: np.ndarray) -> dict:
    e1, e2 = errors(result, params)
    out = {}
    for key, e in (("t1", e1), ("t2", e2)):
        mae, mae_std, fold_rmse, fold_std = fold_figures(e)
        out.update({f"{key}_mae_ms": mae, f"{key}_mae_std_ms": mae_std, f"{key}_rmse_ms": fold_rmse,
                    f"{key}_rmse_std_ms": fold_std})
    return out


def _paper_b(name: str) -> dict | None:
    paper = PAPER_B.get(name)
    if paper is None:
        return None
    return dict(zip(("t1_mae_ms", "t1_rmse_ms", "t2_mae_ms", "t2_rmse_ms", "time_per_signal"), paper, strict=True))


def oksuz_eval(run: Run, setting: dict, size: dict) -> None:
    params = setting["test"].params
    signals = setting["test_signals"]
    device = run.args.device
    for name in OKSUZ_NETWORKS:
        record = setting["networks"].get(name)
        if record is None or "archive" not in record:
            continue
        try:
            path = run.out / record["archive"]
            model = load_model(path, device=device)
            result, seconds = clock(device, model.map_signals, signals, refine=0, warmups=2)
            record["figures"] = {**_oksuz_figures(result, params), "n_test": int(len(params)),
                                 "device_ms_per_signal": seconds / len(params) * 1e3,
                                 "device_forward_only_ms_per_signal": _forward_seconds(model, signals, device)
                                 / len(params) * 1e3}
            if device == "cpu":
                cpu_seconds, n_cpu = seconds, len(params)
            else:
                n_cpu = min(size["cpu_signals"], 1000, len(params))
                cpu = load_model(path, device="cpu")
                _, cpu_seconds = clock("cpu", cpu.map_signals, signals[:n_cpu], refine=0, warmups=2)
            record["figures"]["cpu_ms_per_signal"] = cpu_seconds / n_cpu * 1e3
            record["figures"]["cpu_measured_on"] = int(n_cpu)
            record["paper"] = _paper_b(name)
            f = record["figures"]
            run.say(f"  {name}: T1 MAE {f['t1_mae_ms']:.1f} +- {f['t1_mae_std_ms']:.1f}, T2 MAE {f['t2_mae_ms']:.1f}"
                    f" +- {f['t2_mae_std_ms']:.1f} ms; {f['device_ms_per_signal']:.4f} ms/signal on {device}, "
                    f"{f['cpu_ms_per_signal']:.4f} on the CPU")
        except Exception as exc:
            record["error"] = f"evaluation: {type(exc).__name__}: {exc}"
            run.say(f"  {name}: evaluation FAILED {exc}")


def inner_product(run: Run, setting: dict, size: dict) -> None:
    """Inner product matching of the test signals: their grid (or a coarse one with --quick) on the device."""
    schedule, space, device = setting["schedule"], setting["space"], run.args.device
    if size["ip_grid_step_pct"]:
        grid = percent_grid(size["ip_grid_step_pct"], space.t1_range_ms, space.t2_range_ms)
        grid_name = f"percent grid {size['ip_grid_step_pct']:g} % (quick)"
    else:
        grid, grid_name = oksuz_grid(), "Oksuz et al. grid (114,400 atoms)"
    dictionary, build_s = clock(device, build_dictionary, schedule, grid, n_states=50, rank=10, device=device,
                                progress=False)
    signals, params = setting["test_signals"], setting["test"].params
    coefficients = dictionary.basis.project(signals)
    match(dictionary, coefficients[:16], domain="subspace", search="exhaustive", device=device)  # warm-up
    result, seconds = clock(device, match, dictionary, coefficients, domain="subspace", search="exhaustive",
                            device=device)
    _, time_seconds = clock(device, match, dictionary, signals, domain="time", search="exhaustive", device=device)
    setting["networks"]["inner product"] = {
        "grid": grid_name, "n_atoms": int(dictionary.n_atoms), "dictionary_build_s": build_s,
        "figures": {**_oksuz_figures(result, params), "n_test": int(len(params)),
                    "device_ms_per_signal": seconds / len(params) * 1e3,
                    "device_time_domain_ms_per_signal": time_seconds / len(params) * 1e3},
        "paper": _paper_b("inner product"), "note": "complex signals, subspace rank 10, exhaustive, on " + device,
    }


def simulate_setting(run: Run, key: str, size: dict) -> dict:
    """Training, validation and test sets of a setting, simulated with the EPG on the device."""
    args, device = run.args, run.args.device
    if key == "song":
        schedule, space, configs = song_setting(size["song_train"], size["epochs"], None)
        n_train, n_val, n_test, trs, snr = size["song_train"], 2000, size["song_test"], size["song_trs"], None
        names, paper = SONG_NETWORKS, PAPER_A
    else:
        schedule, space, configs = oksuz_setting(size["oksuz_train"], size["epochs"], None, args.snr, 1)
        n_train, n_val, n_test, trs, snr = size["oksuz_train"], 5000, size["oksuz_test"], size["oksuz_trs"], args.snr
        names, paper = OKSUZ_NETWORKS, PAPER_B
    n_val = size["n_val"] or n_val
    if trs:
        schedule = schedule.truncated(trs)
    configs = {n: dataclasses.replace(configs[n], n_train=n_train) for n in names}
    (train, val), seconds = clock(device, lambda: (
        simulate_set(schedule, space, n_train, np.random.default_rng(0), None, 50, device=device),
        simulate_set(schedule, space, n_val, np.random.default_rng(1), None, 50, device=device)))
    rng = np.random.default_rng(2019)
    test = simulate_set(schedule, space, n_test, rng, None, 50, device=device)
    setting = {"schedule": schedule, "space": space, "configs": configs, "data": (train, val), "test": test,
               "n_val": n_val, "paper": paper, "networks": {}, "trained": {}}
    if snr is not None:
        setting["test_signals"], _ = noisy(test.signals.numpy(), snr, rng)
    run.figures[key].update(schedule=schedule.describe(), n_timepoints=schedule.n_timepoints,
                            parameter_space=space.to_dict(), n_train=n_train, n_val=n_val, n_test=n_test, snr=snr,
                            simulate_s=round(seconds, 2), networks=setting["networks"])
    run.say(f"  {key}: {n_train} + {n_val} signals of {schedule.n_timepoints} TRs simulated on {device} in "
            f"{seconds:.1f} s")
    return setting


def train_setting(run: Run, setting: dict, size: dict, amp: str | None, pending: list[str]) -> None:
    for name, config in setting["configs"].items():
        try:
            train_one(run, setting, name, config, size, amp, pending)
        except Exception as exc:
            setting["networks"].setdefault(name, {"arch": config.arch})["error"] = \
                f"training: {type(exc).__name__}: {exc}"
            run.say(f"  {name}: training FAILED {type(exc).__name__}: {exc}")
        pending.remove(name)


# ---- reconstruction -----------------------------------------------------------------------------------
def _map_slice(model, coefficients: np.ndarray, basis, mask: np.ndarray):
    x = np.moveaxis(coefficients, 0, -1)[mask]
    return model.map_coefficients(x, basis)


def recon(run: Run, size: dict) -> None:
    from mrf_core.io.rawio import validate_header
    from mrf_core.physics.sequence import default_schedule
    from mrf_core.recon.gather import SliceGatherer
    from mrf_core.recon.nufft import backend_available
    from mrf_core.recon.reconstruct import ReconSettings, reconstruct_slice
    from mrf_core.recon.trajectory import SpiralParams
    from mrf_core.sim.phantoms import nist_phantom
    from mrf_core.sim.simulate import ScanSettings, SimulatedScan

    record = run.figures["recon"]
    device, n = run.args.device, size["matrix"]
    schedule = default_schedule()
    fov = 240.0 if run.args.quick else 300.0
    started = time.perf_counter()
    phantom = nist_phantom("NiCl2", field_t=3.0, matrix=n, fov_mm=fov)
    scan = SimulatedScan(phantom, schedule, SpiralParams(fov_mm=fov, matrix=n),
                         ScanSettings(n_coils=size["coils"], snr=40.0))
    gatherer = SliceGatherer(validate_header(scan.header))
    slices = [s for acq in scan.acquisitions() for s in gatherer.add(acq)] + gatherer.finish()
    data = slices[0]
    record.update(slice=f"NIST T1 plate (NiCl2) at 3 T, {n}^2 over {fov:g} mm, {schedule.n_timepoints} TRs, "
                        f"{size['coils']} coils, SNR 40", simulate_and_gather_s=round(time.perf_counter() - started, 2))
    run.save()
    model_path = default_model_path()
    basis = load_model(model_path).basis
    mask = phantom.mask[0]
    every_voxel = np.ones(int(mask.sum()), bool)  # the maps hold the masked voxels only
    threads = min(os.cpu_count() or 2, 16)
    backend = "cufinufft" if device != "cpu" and backend_available("cufinufft", device) else "sigpy"
    runs = {"cpu": ReconSettings(method="llr", device="cpu", nufft_backend="finufft", n_threads=threads,
                                 n_iterations=size["iterations"]),
            "device": ReconSettings(method="llr", device=device, nufft_backend=backend, n_threads=threads,
                                    n_iterations=size["iterations"])}
    out = {}
    for key, settings in runs.items():
        entry = record.setdefault(key, {})
        entry.update(device=settings.device, nufft_backend=settings.nufft_backend, method="llr",
                     iterations=settings.iterations, rank=basis.rank)
        try:
            result, seconds = clock(settings.device, reconstruct_slice, data, basis, settings)
            if settings.device != "cpu" and run.left() > 2 * seconds + 20:  # the first run compiled GPU kernels
                entry["cold_reconstruct_s"] = seconds
                entry["cold_stage_s"] = {k: round(v, 3) for k, v in result.timings_s.items()}
                result, seconds = clock(settings.device, reconstruct_slice, data, basis, settings)
            model = load_model(model_path, device=settings.device)
            _map_slice(model, result.coefficients[:, :4, :4], basis, np.ones((4, 4), bool))  # warm-up
            maps, map_s = clock(settings.device, _map_slice, model, result.coefficients, basis, mask)
            entry.update(stage_s={k: round(v, 3) for k, v in result.timings_s.items()}, reconstruct_s=seconds,
                         map_s=map_s, total_s=seconds + map_s, notes=result.notes,
                         t1_nrmse=map_nrmse(maps.t1_ms, phantom.t1_ms[0][mask], every_voxel),
                         t2_nrmse=map_nrmse(maps.t2_ms, phantom.t2_ms[0][mask], every_voxel))
            out[key] = (result.coefficients, maps)
            run.say(f"  recon {key} ({settings.device}, {settings.nufft_backend}): {seconds:.2f} s + map {map_s:.2f}"
                    f" s; T1/T2 NRMSE {entry['t1_nrmse']:.4f}/{entry['t2_nrmse']:.4f}")
        except Exception as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"
            entry["traceback"] = traceback.format_exc(limit=6)
            run.say(f"  recon {key}: FAILED {type(exc).__name__}: {exc}")
        run.save()
    if len(out) == 2:
        (c_cpu, m_cpu), (c_dev, m_dev) = out["cpu"], out["device"]
        agreement = {"coefficient_relative_difference": float(np.linalg.norm(c_dev - c_cpu) / np.linalg.norm(c_cpu)),
                     "tolerance": {**MAP_TOLERANCE, "coefficients": COEFFICIENT_TOLERANCE,
                                   "rule": "maps agree when >= fraction of the object's voxels differ by <= relative "
                                           "in T1 and in T2; coefficients when their relative difference <= "
                                           "coefficients"}}
        within = []
        for key in ("t1_ms", "t2_ms"):
            a, b = getattr(m_cpu, key), getattr(m_dev, key)
            rel = np.abs(b - a) / np.abs(a)
            rel = np.where(np.isfinite(rel), rel, np.inf)
            agreement[key] = {"median_relative": float(np.median(rel)), "p99_relative": float(np.quantile(rel, 0.99)),
                              "fraction_within": float(np.mean(rel <= MAP_TOLERANCE["relative"]))}
            within.append(agreement[key]["fraction_within"] >= MAP_TOLERANCE["fraction"])
        agreement["maps_agree"] = bool(all(within))
        agreement["coefficients_agree"] = agreement["coefficient_relative_difference"] <= COEFFICIENT_TOLERANCE
        for stage in record["cpu"]["stage_s"]:
            if stage in record["device"]["stage_s"] and record["device"]["stage_s"][stage] > 0:
                agreement.setdefault("speedup_per_stage", {})[stage] = \
                    record["cpu"]["stage_s"][stage] / record["device"]["stage_s"][stage]
        record["agreement"] = agreement
        run.say(f"  recon agreement: maps {agreement['maps_agree']}, coefficients "
                f"{agreement['coefficient_relative_difference']:.2e}")


# ---- main ---------------------------------------------------------------------------------------------
def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="results folder (figures.json, archives, run.log)")
    p.add_argument("--budget-s", type=float, default=480.0, help="total seconds for every stage together")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of every stage")
    p.add_argument("--batch", type=int, default=None, help="training batch (default 1024 on CUDA, the paper's on CPU)")
    p.add_argument("--amp-song", choices=("bf16", "fp16", "none"), default="fp16",
                   help="autocast dtype for the residual CNN (fp16: more mantissa for the ~1e-4 relative RMSE)")
    p.add_argument("--amp-oksuz", choices=("bf16", "fp16", "none"), default="bf16")
    p.add_argument("--snr", type=float, default=5.0, help="Oksuz test/training SNR (seed_tables' default)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--max-archive-mib", type=float, default=16.0,
                   help="archives of this size or more are written with float16 weights (at most 16)")
    args = p.parse_args(argv)
    args.max_archive_mib = min(args.max_archive_mib, MAX_ARCHIVE_BYTES / 2**20)
    if args.batch is None and args.device != "cpu":
        args.batch = 1024
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # fixed shapes per network: cuDNN picks its fastest kernels once
    size = sizes(args.quick)
    run = Run(args)
    run.figures["run"]["sizes"] = size
    amp_song, amp_oksuz = (None if a == "none" else a for a in (args.amp_song, args.amp_oksuz))
    pending = list(SONG_NETWORKS + OKSUZ_NETWORKS)
    settings = {}
    try:
        run.stage("env", 0, env, run)
        for key, amp in (("song", amp_song), ("oksuz", amp_oksuz)):
            setting = run.stage(f"{key}_data", 5 if args.quick else 30, simulate_setting, run, key, size)
            if setting is None:
                for name in SONG_NETWORKS if key == "song" else OKSUZ_NETWORKS:
                    run.figures[key].setdefault("networks", {})[name] = {"error": "no data: see stages"}
                    pending.remove(name)
                continue
            settings[key] = setting
            run.stage(f"{key}_train", size["min_train_s"] + 1, train_setting, run, setting, size, amp, pending)
            run.stage(f"{key}_export", 0, export, run, setting)  # always: cheap, and what the run is for
        if "song" in settings:
            run.stage("song_eval", 2 if args.quick else 20, song_eval, run, settings["song"], size)
        if "oksuz" in settings:
            run.stage("oksuz_eval", 2 if args.quick else 20, oksuz_eval, run, settings["oksuz"], size)
            run.stage("inner_product", 2 if args.quick else 20, inner_product, run, settings["oksuz"], size)
        run.stage("recon", 5 if args.quick else 60, recon, run, size)
        for key in ("song", "oksuz"):  # a network without figures says why
            for record in run.figures[key].get("networks", {}).values():
                if "figures" not in record and "error" not in record:
                    why = "no archive" if "archive" not in record else "not evaluated"
                    record["error"] = f"{why}: budget spent or a stage failed (see stages)"

    finally:
        run.close()
    return run.figures


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
