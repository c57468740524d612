"""Instructions per inference of TFLite (ai-edge-litert) on a Cortex-A72, without a Pi.

A zoo network is converted to a float32 (or, with --quant int8, a fully int8) .tflite with
litert-torch on the host, then run by the aarch64 build of ai-edge-litert inside an arm64 Debian
root under `qemu-aarch64 -cpu cortex-a72` (user mode), once with the default XNNPACK delegate and
once with the built-in kernels only (BUILTIN_WITHOUT_DEFAULT_DELEGATES), both with num_threads=1.

Counting: a small TCG plugin (built here with the host's gcc, no QEMU headers needed) counts
executed guest instructions per thread; the guest script brackets every `invoke()` with a marker
system call (getpid with a magic first argument) that the plugin sees, and the plugin logs the
counters at each marker. The cost of one bare marker pair is measured in the same run and
subtracted, so a number is: TFLite's Invoke() plus the Python/pybind11 call into it (a few thousand
instructions, see `details.python_call_overhead_note`). These are instruction counts, not cycles.

    sudo bash benchmarks/arm64_root.sh      # once (also run automatically if the root is missing)
    .venv-litert/bin/python benchmarks/arm_xnnpack.py                      # every row of arm_models.py
    .venv-litert/bin/python benchmarks/arm_xnnpack.py --models mobilenet_v1_0.25_96 --inferences 5 --repeat 2
    .venv-litert/bin/python benchmarks/arm_xnnpack.py --models mobilenet_v1_0.25_96,mobilenet_v2_0.35_96 \
        --quant fp32,int8 --num-classes 10

int8 (--quant int8): static post-training quantization with litert-torch's PT2E quantizer
(`get_symmetric_quantization_config(is_per_channel=True)`: int8 per-channel symmetric weights, int8
per-tensor affine activations calibrated with a histogram observer on CALIBRATION_SAMPLES standard
normal inputs of seed CALIBRATION_SEED; the measured input is a different one, seed 0), exported
with `torch.export(strict=True)` (a non-strict export records no `source_fn_stack`, and the
quantizer's add annotator then misses residual adds, leaving float ADDs between DEQUANTIZE and
QUANTIZE), converted with `QuantConfig(pt2e_quantizer=...)`. The model's input and output are int8:
the guest quantizes the same float input with the input tensor's scale/zero point and dequantizes
the output, outside the counted region. The JSON records each op with its input tensor types
(`ops_typed`; `ops` lists the graph's nodes plus a DELEGATE node when one was applied) and, per
resolver, `graph_nodes` and `delegated_nodes` (per DELEGATE node, the graph nodes it replaced: those
reached walking back from its outputs to its inputs; fp32 rows gain only these two fields); int8
rows carry `quant: "int8"` and the key `<row>_int8`. Accuracy of an int8 model on random weights is
not a goal here: `max_abs_diff_vs_pt2e` compares with the quantized torch graph the converter was
given, `max_abs_diff_vs_torch` with the float network.

The networks are the rows of benchmarks/arm_models.py (one per zoo family; benchmarks/arm_compare.py
builds ours from the same rows; rows of EXTRA_MODELS are only run when named). One JSON per network
and --quant, named by its key (`<row>`, `<row>_int8`; `_c<N>` before that when --num-classes is not
NUM_CLASSES); a network litert-torch cannot convert gets a JSON with `convert_error` (the exception,
verbatim) instead of counts.

Environment (all optional): EC_ARM64_ROOT (default <repo>/../.cache/arm64-root), EC_QEMU_AARCH64
(default qemu-aarch64: must be the dynamically linked one, the -static build has no plugin
support), EC_BENCH_PYTHON (python with torch + litert-torch, used when this one lacks them;
default .venv-litert/bin/python, made by benchmarks/run.sh), EC_CACHE_DIR (plugin build and default JSON output; default
$XDG_CACHE_HOME/edgecompile or ~/.cache/edgecompile), CC (default gcc).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arm_models import BY_KEY, NUM_CLASSES, SEED, ArmModel, select  # noqa: E402

QUANTS = ("fp32", "int8")
CALIBRATION_SAMPLES = 8            # --quant int8: standard normal calibration inputs
CALIBRATION_SEED = 1               # (the measured input is seed 0)

REPO = Path(__file__).resolve().parents[1]
SETUP_SCRIPT = Path(__file__).resolve().with_name("arm64_root.sh")
GUEST_VENV = "/opt/litert"           # inside the root, made by arm64_root.sh
MARK_MAGIC = 0xEC1A5E
AARCH64_GETPID = 172

PLUGIN_SOURCE = r"""
/* Per-thread guest instruction counter with syscall markers (QEMU plugin API v1, QEMU 7.x).
 * The guest marks a point with getpid(MAGIC, tag) -- getpid ignores its arguments. At each marker
 * the plugin appends "mark <tag> <vcpu> <count of that thread> <count of all threads>" to out=FILE;
 * at exit one "total <vcpu> <count>" line per vCPU (= guest thread slot in user mode). */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef uint64_t plugin_id;
struct qemu_plugin_tb;
struct qemu_info_t;

__attribute__((visibility("default"))) int qemu_plugin_version = 1;

extern void qemu_plugin_register_vcpu_tb_trans_cb(plugin_id, void (*)(plugin_id, struct qemu_plugin_tb *));
extern size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *);
extern void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *, void (*)(unsigned int, void *), int, void *);
extern void qemu_plugin_register_vcpu_syscall_cb(
    plugin_id, void (*)(plugin_id, unsigned int, int64_t, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t,
                        uint64_t, uint64_t, uint64_t));
extern void qemu_plugin_register_atexit_cb(plugin_id, void (*)(plugin_id, void *), void *);

#define SLOTS 512
#define MARK_NR @MARK_NR@
#define MARK_MAGIC @MARK_MAGIC@ULL

/* one cache line per thread: threads run concurrently under MTTCG and only write their own slot */
static struct { uint64_t n; char pad[56]; } per_thread[SLOTS];
static unsigned int highest;
static FILE *out;

static inline unsigned int slot(unsigned int vcpu) { return vcpu < SLOTS ? vcpu : SLOTS - 1; }

static void tb_executed(unsigned int vcpu, void *n_insns) {
  per_thread[slot(vcpu)].n += (uint64_t)(uintptr_t)n_insns;
  if (vcpu >= highest) __atomic_store_n(&highest, vcpu + 1, __ATOMIC_RELAXED);
}

static void tb_translated(plugin_id id, struct qemu_plugin_tb *tb) {
  (void)id;
  qemu_plugin_register_vcpu_tb_exec_cb(tb, tb_executed, 0 /* no registers */,
                                       (void *)(uintptr_t)qemu_plugin_tb_n_insns(tb));
}

static void syscall_entered(plugin_id id, unsigned int vcpu, int64_t nr, uint64_t a1, uint64_t a2, uint64_t a3,
                            uint64_t a4, uint64_t a5, uint64_t a6, uint64_t a7, uint64_t a8) {
  (void)id; (void)a3; (void)a4; (void)a5; (void)a6; (void)a7; (void)a8;
  if (nr != MARK_NR || a1 != MARK_MAGIC) return;
  uint64_t all = 0;
  for (unsigned int i = 0; i < SLOTS; ++i) all += __atomic_load_n(&per_thread[i].n, __ATOMIC_RELAXED);
  fprintf(out, "mark %llu %u %llu %llu\n", (unsigned long long)a2, vcpu,
          (unsigned long long)per_thread[slot(vcpu)].n, (unsigned long long)all);
  fflush(out);
}

static void finished(plugin_id id, void *unused) {
  (void)id; (void)unused;
  for (unsigned int i = 0; i < highest && i < SLOTS; ++i)
    fprintf(out, "total %u %llu\n", i, (unsigned long long)per_thread[i].n);
  fclose(out);
}

__attribute__((visibility("default"))) int qemu_plugin_install(plugin_id id, const struct qemu_info_t *info,
                                                              int argc, char **argv) {
  (void)info;
  for (int i = 0; i < argc; ++i)
    if (strncmp(argv[i], "out=", 4) == 0) out = fopen(argv[i] + 4, "w");
  if (!out) return -1;
  qemu_plugin_register_vcpu_tb_trans_cb(id, tb_translated);
  qemu_plugin_register_vcpu_syscall_cb(id, syscall_entered);
  qemu_plugin_register_atexit_cb(id, finished, 0);
  return 0;
}
""".replace("@MARK_NR@", str(AARCH64_GETPID)).replace("@MARK_MAGIC@", hex(MARK_MAGIC))

# Runs inside the emulated arm64 Python. argv: model input.npy output.npy info.json K resolver
GUEST_SCRIPT = r"""
import ctypes, gc, json, sys
_syscall = ctypes.CDLL("libc.so.6").syscall
_nr, _magic = ctypes.c_long(@MARK_NR@), ctypes.c_long(@MARK_MAGIC@)
def mark(tag):
    _syscall(_nr, _magic, ctypes.c_long(tag))
mark(1)
import numpy as np
from importlib import metadata
from ai_edge_litert import interpreter as tfl
mark(2)
model, inp_path, out_path, info_path, k, resolver = sys.argv[1:7]
k = int(k)
kind = {"xnnpack": tfl.OpResolverType.AUTO, "builtin": tfl.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}[resolver]
it = tfl.Interpreter(model_path=model, num_threads=1, experimental_op_resolver_type=kind)
it.allocate_tensors()
src, dst = it.get_input_details()[0], it.get_output_details()[0]
x = np.load(inp_path)
if src["dtype"] != np.float32:        # an int8 model takes the float input quantized (not counted)
    scale, zero = src["quantization"]
    lim = np.iinfo(src["dtype"])
    x = np.clip(np.round(x / scale) + zero, lim.min, lim.max).astype(src["dtype"])
it.set_tensor(src["index"], x)
gc.collect()
gc.disable()                        # no collector pass inside a measured region
mark(3)
mark(10); mark(11)                  # a bare marker pair: its cost is subtracted from each inference
for i in range(k):
    mark(100 + 2 * i)
    it.invoke()
    mark(101 + 2 * i)
y = it.get_tensor(dst["index"])
if dst["dtype"] != np.float32:
    scale, zero = dst["quantization"]
    y = (y.astype(np.float32) - zero) * scale
np.save(out_path, y)
types = {t["index"]: np.dtype(t["dtype"]).name for t in it.get_tensor_details()}
details = it._get_ops_details()
producer = {int(t): op["index"] for op in details if op["op_name"] != "DELEGATE" for t in op["outputs"]}
nodes = {op["index"]: op for op in details}
delegated = []                      # per DELEGATE node: the graph nodes between its inputs and outputs
for op in details:
    if op["op_name"] == "DELEGATE":
        stop, seen, todo = {int(t) for t in op["inputs"]}, set(), [int(t) for t in op["outputs"]]
        while todo:
            t = todo.pop()
            if t in stop or t not in producer or producer[t] in seen:
                continue
            seen.add(producer[t])
            todo += [int(u) for u in nodes[producer[t]]["inputs"] if u >= 0]
        delegated.append(len(seen))
ops, ops_typed = {}, {}
for op in details:
    ops[op["op_name"]] = ops.get(op["op_name"], 0) + 1
    typed = op["op_name"] if op["op_name"] == "DELEGATE" else \
        op["op_name"] + "(" + ",".join(types.get(int(i), "?") for i in op["inputs"] if i >= 0) + ")"
    ops_typed[typed] = ops_typed.get(typed, 0) + 1
import platform
json.dump({"ops": ops, "ops_typed": ops_typed, "delegated_nodes": delegated,
           "graph_nodes": sum(1 for op in details if op["op_name"] != "DELEGATE"),
           "input_dtype": np.dtype(src["dtype"]).name, "output_dtype": np.dtype(dst["dtype"]).name,
           "python": platform.python_version(), "machine": platform.machine(),
           "ai_edge_litert": metadata.version("ai-edge-litert"), "numpy": np.__version__}, open(info_path, "w"))
mark(4)
""".replace("@MARK_NR@", str(AARCH64_GETPID)).replace("@MARK_MAGIC@", hex(MARK_MAGIC))


def cache_dir() -> Path:
    base = os.environ.get("EC_CACHE_DIR")
    if base:
        return Path(base)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "edgecompile"


def arm64_root() -> Path:
    return Path(os.environ.get("EC_ARM64_ROOT", REPO.parent / ".cache" / "arm64-root"))


def ensure_bench_python() -> None:
    """Re-run this script with the benchmark venv's python when torch/litert-torch are missing here."""
    try:
        import litert_torch  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        bench = os.environ.get("EC_BENCH_PYTHON", str(Path(__file__).resolve().parents[1] / ".venv-litert" / "bin" / "python"))
        if Path(bench).exists() and not os.environ.get("EC_ARM_XNNPACK_REEXEC"):
            os.environ["EC_ARM_XNNPACK_REEXEC"] = "1"      # (a venv's python may be a symlink to this one)
            os.execv(bench, [bench, str(Path(__file__).resolve()), *sys.argv[1:]])
        sys.exit(f"torch and litert-torch are needed: run with the benchmark venv's python or set "
                 f"EC_BENCH_PYTHON (tried {bench})")


def guest_site_packages(root: Path) -> tuple[Path, str]:
    """The root's python3.X and the guest path of the venv's site-packages."""
    found = sorted((root / "opt" / "litert" / "lib").glob("python3.*/site-packages/ai_edge_litert"))
    if not found:
        raise FileNotFoundError
    pyver = found[-1].parents[1].name                      # python3.11
    return root / "usr" / "bin" / pyver, f"{GUEST_VENV}/lib/{pyver}/site-packages"


def ensure_root(root: Path) -> tuple[Path, str]:
    try:
        python, site = guest_site_packages(root)
        if (root / "proc" / "cpuinfo").is_file() and python.exists():
            return python, site
    except FileNotFoundError:
        pass
    print(f"[arm_xnnpack] {root} is missing or incomplete: running {SETUP_SCRIPT.name} (several minutes)",
          file=sys.stderr)
    subprocess.run(["bash", str(SETUP_SCRIPT)], check=True, env={**os.environ, "EC_ARM64_ROOT": str(root)})
    return guest_site_packages(root)


def build_plugin() -> Path:
    digest = hashlib.sha256(PLUGIN_SOURCE.encode()).hexdigest()[:12]
    out_dir = cache_dir() / "qemu-plugins"
    lib = out_dir / f"libec_insn_marks-{digest}.so"
    if lib.exists():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    src = out_dir / f"ec_insn_marks-{digest}.c"
    src.write_text(PLUGIN_SOURCE)
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        sys.exit("no host C compiler for the QEMU plugin (apt-get install gcc)")
    tmp = lib.with_suffix(f".tmp{os.getpid()}")
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(tmp), str(src)], check=True)
    tmp.rename(lib)
    return lib


class ConvertError(Exception):
    """litert-torch could not convert a network (the message is its exception, verbatim)."""


def convert(m: ArmModel, path: Path, quant: str, num_classes: int) -> tuple[tuple[int, ...], "object", "object"]:
    """Write the .tflite; returns the input shape, the float torch model and (int8) the quantized
    torch graph that was converted (None for fp32)."""
    import contextlib
    import io

    import litert_torch
    import torch

    sys.path.insert(0, str(REPO))
    from models import build_model

    model, shape = build_model(m.model, num_classes=num_classes, seed=SEED, **m.options)
    args = (torch.zeros(shape),)
    quantized = None
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            if quant == "fp32":
                litert_torch.convert(model, args).export(str(path))
            else:
                from litert_torch.quantize import pt2e_quantizer, quant_config
                from torchao.quantization.pt2e import move_exported_model_to_eval
                from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

                quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
                    pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=True))
                graph = torch.export.export(model, args, strict=True).module()
                graph = prepare_pt2e(graph, quantizer)
                gen = torch.Generator().manual_seed(CALIBRATION_SEED)
                with torch.no_grad():
                    for _ in range(CALIBRATION_SAMPLES):
                        graph(torch.randn(shape, generator=gen))
                quantized = convert_pt2e(graph, fold_quantize=False)
                move_exported_model_to_eval(quantized)
                litert_torch.convert(quantized, args,
                                     quant_config=quant_config.QuantConfig(pt2e_quantizer=quantizer)).export(str(path))
    except Exception as err:  # noqa: BLE001 - whatever the converter raises is the result to record
        raise ConvertError(f"{type(err).__name__}: {err}".strip()) from err
    return shape, model, quantized


def parse_counts(path: Path) -> tuple[dict[int, tuple[int, int, int]], dict[int, int]]:
    marks: dict[int, tuple[int, int, int]] = {}
    totals: dict[int, int] = {}
    for line in path.read_text().splitlines():
        f = line.split()
        if f[0] == "mark":
            marks[int(f[1])] = (int(f[2]), int(f[3]), int(f[4]))
        elif f[0] == "total":
            totals[int(f[1])] = int(f[2])
    return marks, totals


def run_guest(qemu: str, cpu: str, root: Path, python: Path, site: str, plugin: Path, model: Path,
              inp: Path, k: int, resolver: str, work: Path, tag: str) -> dict:
    counts, out, info = work / f"{tag}.counts", work / f"{tag}.out.npy", work / f"{tag}.info.json"
    script = work / "guest.py"
    env = {"PATH": "/usr/bin:/bin", "HOME": "/root", "LANG": "C.UTF-8", "PYTHONPATH": site,
           "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1",
           "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [qemu, "-cpu", cpu, "-L", str(root), "-plugin", f"{plugin},out={counts}",
           str(python), str(script), str(model), str(inp), str(out), str(info), str(k), resolver]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        hint = ""
        if "unknown option 'plugin'" in proc.stderr:
            hint = " (this qemu has no plugin support: use the dynamically linked qemu-aarch64, not -static)"
        raise RuntimeError(f"guest run failed{hint}: rc {proc.returncode}\n{proc.stderr[-2000:]}")
    marks, totals = parse_counts(counts)
    main_vcpu = marks[100][0]
    this = {t: m[1] for t, m in marks.items()}        # the calling thread's counter
    every = {t: m[2] for t, m in marks.items()}       # all threads
    overhead = this[11] - this[10]
    per_inf = [this[101 + 2 * i] - this[100 + 2 * i] - overhead for i in range(k)]
    per_inf_all = [every[101 + 2 * i] - every[100 + 2 * i] - overhead for i in range(k)]
    steady = per_inf[1:] or per_inf
    import numpy as np
    return {
        "wall_s": round(wall, 2),
        "marker_overhead": overhead,
        "first_inference": per_inf[0],
        "inferences": per_inf,
        "steady_median": int(statistics.median(steady)),
        "steady_spread": max(steady) - min(steady),
        "other_threads_during_inferences": sum(per_inf_all) - sum(per_inf),
        "guest_threads": len(totals),
        "main_vcpu": main_vcpu,
        "startup_instructions": this[3],
        "process_total_instructions": sum(totals.values()),
        "output": np.load(out),
        "info": json.loads(info.read_text()),
    }


def result_key(m: ArmModel, quant: str, num_classes: int) -> str:
    """JSON key and file name: fp32 at NUM_CLASSES keeps the row's key (what arm_compare.py reads)."""
    return m.key + ("" if num_classes == NUM_CLASSES else f"_c{num_classes}") + ("" if quant == "fp32" else f"_{quant}")


def measure(m: ArmModel, quant: str, args: argparse.Namespace, qemu: str, qemu_version: str, root: Path,
            python: Path, site: str, plugin: Path) -> dict:
    """One network at one precision: convert, run under each resolver, and the result row (or the
    conversion error)."""
    import numpy as np
    import torch

    base = {"key": result_key(m, quant, args.num_classes), "model": m.model, "label": m.label, **m.options,
            "num_classes": args.num_classes, "seed": SEED, "qemu": qemu_version, "cpu": args.cpu}
    if quant != "fp32":
        base = {**base, "quant": quant}
    with tempfile.TemporaryDirectory(prefix="ec-arm-") as tmp:
        work = Path(tmp)
        if (root / work.relative_to("/")).exists():
            sys.exit(f"{work} also exists inside {root}: qemu -L would resolve it there")
        (work / "guest.py").write_text(GUEST_SCRIPT)
        tfl = work / "model.tflite"
        t0 = time.monotonic()
        try:
            shape, model, quantized = convert(m, tfl, quant, args.num_classes)
        except ConvertError as err:
            msg = str(err)
            print(f"[arm_xnnpack] {m.label} {quant}: litert-torch could not convert it: {msg[:300]}", file=sys.stderr)
            return {**base, "tflite_xnnpack_instructions_per_inference": None,
                    "tflite_builtin_instructions_per_inference": None,
                    "convert_error": msg[:4000], "details": {"convert_s": round(time.monotonic() - t0, 1)}}
        convert_s = time.monotonic() - t0
        if args.keep_tflite:
            Path(args.keep_tflite).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tfl, Path(args.keep_tflite) / f"{base['key']}.tflite")
        x = np.random.RandomState(0).standard_normal(shape).astype(np.float32)
        np.save(work / "input.npy", x)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
            ref_q = quantized(torch.from_numpy(x)).numpy() if quantized is not None else None

        runs: dict[str, list[dict]] = {r: [] for r in args.resolvers.split(",")}
        for rep in range(args.repeat):
            for resolver in runs:           # one qemu at a time
                r = run_guest(qemu, args.cpu, root, python, site, plugin, tfl, work / "input.npy",
                              args.inferences, resolver, work, f"{resolver}{rep}")
                print(f"[arm_xnnpack] {m.label} {quant}: {resolver} run {rep + 1}: {r['steady_median']:,} "
                      f"instructions/inference (first {r['first_inference']:,}), {r['wall_s']} s", file=sys.stderr)
                runs[resolver].append(r)
        tflite_bytes = tfl.stat().st_size

    def summary(rs: list[dict]) -> dict:
        values = [r["steady_median"] for r in rs]
        return {
            "steady_per_run": values,
            "first_inference_per_run": [r["first_inference"] for r in rs],
            "inferences_run1": rs[0]["inferences"],
            "max_spread_between_runs": max(values) - min(values),
            "max_spread_within_run": max(r["steady_spread"] for r in rs),
            "marker_overhead_per_run": [r["marker_overhead"] for r in rs],
            "guest_threads": max(r["guest_threads"] for r in rs),
            "other_threads_during_inferences": max(r["other_threads_during_inferences"] for r in rs),
            "startup_instructions_run1": rs[0]["startup_instructions"],
            "process_total_instructions_run1": rs[0]["process_total_instructions"],
            "wall_s_per_run": [r["wall_s"] for r in rs],
            "max_abs_diff_vs_torch": float(np.abs(rs[0]["output"] - ref).max()),
            "torch_output_max_abs": float(np.abs(ref).max()),
            **({"max_abs_diff_vs_pt2e": float(np.abs(rs[0]["output"] - ref_q).max())} if ref_q is not None else {}),
            "graph_nodes": rs[0]["info"]["graph_nodes"],
            "delegated_nodes": rs[0]["info"]["delegated_nodes"],
            "ops": rs[0]["info"]["ops"],
            **({"ops_typed": rs[0]["info"]["ops_typed"]} if quant != "fp32" else {}),
        }

    first = next(iter(runs.values()))
    info = first[0]["info"]
    details = {
        "input_shape": list(shape),
        "tflite_bytes": tflite_bytes,
        "inferences_per_run": args.inferences,
        "runs": args.repeat,
        "convert_s": round(convert_s, 1),
        "guest": {k: info[k] for k in ("python", "machine", "ai_edge_litert", "numpy")},
        **({"calibration": f"{CALIBRATION_SAMPLES} standard normal inputs, seed {CALIBRATION_SEED}",
            "io_dtypes": [info["input_dtype"], info["output_dtype"]]} if quant != "fp32" else {}),
        **{resolver: summary(rs) for resolver, rs in runs.items()},
    }
    if "xnnpack" in runs and "builtin" in runs:
        details["max_abs_diff_xnnpack_vs_builtin"] = float(np.abs(runs["xnnpack"][0]["output"]
                                                                  - runs["builtin"][0]["output"]).max())
    return {
        **base,
        "tflite_xnnpack_instructions_per_inference": runs["xnnpack"][0]["steady_median"] if "xnnpack" in runs else None,
        "tflite_builtin_instructions_per_inference": runs["builtin"][0]["steady_median"] if "builtin" in runs else None,
        "notes": (
            f"Guest instruction counts (not cycles), {PRECISION[quant]}, batch 1, num_classes {args.num_classes}, seed "
            f"{SEED}, NCHW input (litert-torch adds a TRANSPOSE to NHWC). ai-edge-litert "
            f"{info['ai_edge_litert']} (aarch64 wheel) on Python {info['python']} in a Debian arm64 root, "
            f"qemu-aarch64 user mode with -cpu {args.cpu}, num_threads=1. 'xnnpack' = default op resolver "
            "(XNNPACK delegate applied by default); 'builtin' = BUILTIN_WITHOUT_DEFAULT_DELEGATES. Each number "
            "is the median of inferences 2..K of the first run, counted on the calling thread between "
            "marker syscalls around Interpreter.invoke(), with the cost of an empty marker pair subtracted; "
            "it includes the Python/pybind11 call into Invoke() (about 6-7 thousand instructions)."
        ),
        "details": details,
    }


PRECISION = {
    "fp32": "float32",
    "int8": ("int8 (litert-torch PT2E static quantization: per-channel symmetric int8 weights, per-tensor "
             "int8 activations, int8 model input/output quantized/dequantized outside the counted region)"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="all",
                    help=f"comma-separated rows of benchmarks/arm_models.py ({', '.join(BY_KEY)}) or zoo names")
    ap.add_argument("--resolvers", default="xnnpack,builtin",
                    help="xnnpack (default op resolver: XNNPACK delegate) and/or builtin (TFLite's own kernels)")
    ap.add_argument("--quant", default="fp32",
                    help="fp32 and/or int8 (static PT2E quantization, see this file's docstring); int8 JSONs are <row>_int8")
    ap.add_argument("--num-classes", type=int, default=NUM_CLASSES,
                    help=f"classifier width (default {NUM_CLASSES}, what arm_compare.py uses); other values "
                         "add _c<N> to the JSON key")
    ap.add_argument("--inferences", type=int, default=3, help="invokes per run; the first is reported apart")
    ap.add_argument("--repeat", type=int, default=1, help="runs per configuration (determinism check)")
    ap.add_argument("--cpu", default="cortex-a72")
    ap.add_argument("--out-dir", default=None, help="where the per-network JSONs go (default: the cache directory)")
    ap.add_argument("--keep-tflite", default=None, help="also copy each .tflite into this directory")
    args = ap.parse_args()
    models = select(args.models)
    bad = set(args.resolvers.split(",")) - {"xnnpack", "builtin"}
    quants = [q for q in args.quant.split(",") if q]
    if bad or args.inferences < 2 or args.repeat < 1 or not quants or set(quants) - set(QUANTS) \
            or args.num_classes < 1:
        sys.exit(f"error: --resolvers takes xnnpack,builtin (got {args.resolvers}); --quant takes "
                 f"{','.join(QUANTS)} (got {args.quant}); --inferences >= 2; --repeat >= 1; --num-classes >= 1")
    ensure_bench_python()

    qemu = shutil.which(os.environ.get("EC_QEMU_AARCH64", "qemu-aarch64"))
    if not qemu:
        sys.exit("qemu-aarch64 not found (apt-get install qemu-user)")
    qemu_version = subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    root = arm64_root()
    python, site = ensure_root(root)
    plugin = build_plugin()
    out_dir = Path(args.out_dir) if args.out_dir else cache_dir() / "arm_xnnpack"
    out_dir.mkdir(parents=True, exist_ok=True)
    for m in models:
        for quant in quants:
            result = measure(m, quant, args, qemu, qemu_version, root, python, site, plugin)
            out = out_dir / f"{result['key']}.json"
            out.write_text(json.dumps(result, indent=2) + "\n")
            print(json.dumps({k: v for k, v in result.items() if k not in ("details", "notes")}))
            print(f"[arm_xnnpack] wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
