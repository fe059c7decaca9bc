"""weightconv's TensorFlow-checkpoint verbs against TensorFlow itself, on a VGG16-sized checkpoint.

    python benchmarks/ckpt.py [--repeats 5] [--keep] [--only inspect|ckpt2npy|npy2ckpt]

Generates, once, a seeded VGG16 (16 weighted layers, 138,357,544 float32 parameters,
about 553 MB) in benchmarks/work/ckpt/: a .caffemodel converted by `weightconv caffe2npy`
to vgg16.npy ({layer: [W, b]}, TensorFlow layout), then by `weightconv npy2ckpt` to the
V2 checkpoint vgg16.ckpt (names `conv1_1/weights`, ...). Before any timing, a TensorFlow
process checks that `tf.train.load_checkpoint` reads vgg16.ckpt and that every tensor
equals the .npy, so no case times a broken file.

Each case then runs REPEATS times in a fresh process, every case once per round and the
order reversed on alternate rounds; the tables give the median wall time and the median
peak RSS of that process alone (run.py's `measure`, os.wait4). Every TensorFlow case
includes `import tensorflow`, which is what a user of those paths pays. The inputs are in
the page cache for every case; the output folder is emptied and `sync` runs before each.
All cases run with TF_CPP_MIN_LOG_LEVEL=3 and CUDA_VISIBLE_DEVICES="" (weightconv
ignores both), and weightconv's modules are byte-compiled first (its __pycache__ is
gitignored), as `pip install` does and as TensorFlow's and numpy's already are.

Cases, in pairs (weightconv first):
- inspect: `weightconv inspect` vs
  `python -m tensorflow.python.tools.inspect_checkpoint --file_name=PREFIX`;
- ckpt2npy: `weightconv ckpt2npy` (writes a .npy) vs `tf.train.load_checkpoint` +
  `get_tensor` of every tensor (writes nothing), and the same followed by `np.save` of a
  {layer: [W, b]} dict (writes the same kind of .npy); for context, also weightconv's
  library reading every tensor without writing anything (`weightconv.load`, each tensor
  checksummed and returned as an array), the like-for-like of TensorFlow's read-only case;
- npy2ckpt: `weightconv npy2ckpt` vs `tf.compat.v1.train.Saver` saving the .npy's arrays,
  in graph mode (`tf.Variable(initial_value)` in a `tf.Graph`, `Saver().save(sess,
  prefix)`, as TF1-era converters do; writes the .meta graph too, TensorFlow's default) and
  in eager mode (`tf.Variable`s, `Saver(var_list={name: variable}).save(None, prefix)`,
  the leanest Saver path in TensorFlow 2).

Results go to benchmarks/results.md (its checkpoint section). Needs TensorFlow in the same
environment.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
WORK = HERE / "work" / "ckpt"
OUT = WORK / "out"
PARAMETERS = 138_357_544
GROUPS = ("inspect", "ckpt2npy", "npy2ckpt")
TF_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}

# Acceptance thresholds (the issue): speed ratio, and peak-memory condition for ours.
INSPECT_SPEEDUP, INSPECT_MAX_MB = 10.0, 100.0
CONVERT_SPEEDUP = 3.0


def _load_run() -> ModuleType:
    """benchmarks/run.py as a module, whatever the working directory and sys.path."""
    spec = importlib.util.spec_from_file_location("_weightconv_bench_run", HERE / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run = _load_run()

VERIFY = """
import sys
import numpy as np
import tensorflow as tf
reader = tf.train.load_checkpoint(sys.argv[1])
expected = np.load(sys.argv[2], allow_pickle=True, encoding="latin1").item()
names = sorted(reader.get_variable_to_shape_map())
wanted = sorted(f"{layer}/{role}" for layer in expected for role in ("weights", "biases"))
assert names == wanted, (names, wanted)
count = 0
for layer, (weights, biases) in expected.items():
    for role, array in (("weights", weights), ("biases", biases)):
        value = reader.get_tensor(f"{layer}/{role}")
        assert value.dtype == array.dtype and value.shape == array.shape, (layer, role)
        assert np.array_equal(value, array), (layer, role)
        count += array.size
assert count == int(sys.argv[3]), count
print(f"TensorFlow {tf.__version__} reads {len(names)} tensors, {count:,} parameters, "
      f"all equal to the .npy")
"""

OURS_READ = """
import sys
import numpy as np
import weightconv
from weightconv.model.canonical import canonical_layers
weights = weightconv.load(sys.argv[1])
arrays = [np.asarray(t) for layer in canonical_layers(weights) for t in layer.tensors.values()]
print(sum(array.size for array in arrays))
"""

TF_READ = """
import sys
import tensorflow as tf
reader = tf.train.load_checkpoint(sys.argv[1])
arrays = {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
print(sum(array.size for array in arrays.values()))
"""

TF_READ_SAVE = """
import sys
import numpy as np
import tensorflow as tf
reader = tf.train.load_checkpoint(sys.argv[1])
layers = {}
for name in reader.get_variable_to_shape_map():
    layer, role = name.rsplit("/", 1)
    layers.setdefault(layer, {})[role] = reader.get_tensor(name)
np.save(sys.argv[2], {layer: [t["weights"], t["biases"]] for layer, t in layers.items()})
"""

TF_SAVE_GRAPH = """
import sys
import numpy as np
import tensorflow as tf
weights = np.load(sys.argv[1], allow_pickle=True, encoding="latin1").item()
tf.compat.v1.disable_eager_execution()
with tf.Graph().as_default():
    for layer, (w, b) in weights.items():
        with tf.compat.v1.variable_scope(layer):
            tf.compat.v1.Variable(w, name="weights")
            tf.compat.v1.Variable(b, name="biases")
    saver = tf.compat.v1.train.Saver()
    with tf.compat.v1.Session() as sess:
        sess.run(tf.compat.v1.global_variables_initializer())
        saver.save(sess, sys.argv[2])
"""

TF_SAVE_EAGER = """
import sys
import numpy as np
import tensorflow as tf
weights = np.load(sys.argv[1], allow_pickle=True, encoding="latin1").item()
variables = {}
for layer, (w, b) in weights.items():
    variables[f"{layer}/weights"] = tf.Variable(w)
    variables[f"{layer}/biases"] = tf.Variable(b)
tf.compat.v1.train.Saver(var_list=variables).save(None, sys.argv[2])
"""


@dataclass
class Case:
    group: str
    label: str
    command: list[str]
    side: str = "tf"  # "ours": the verb under test; "extra": ours, for context only
    samples: list[tuple[float, float]] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return statistics.median(s[0] for s in self.samples)

    @property
    def rss(self) -> float:
        return statistics.median(s[1] for s in self.samples)

    @property
    def spread(self) -> str:
        walls = [s[0] for s in self.samples]
        return f"{min(walls):.2f}-{max(walls):.2f}"


def _weightconv(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "weightconv", *arguments]


def _script(source: str, *arguments: str) -> list[str]:
    return [sys.executable, "-c", source, *arguments]


def prepare(npy: Path, prefix: Path) -> None:
    """Generate vgg16.npy and vgg16.ckpt (each step in a child: the parent stays small,
    since a child's peak RSS counts its parent's pages at fork), then check them with TF."""
    WORK.mkdir(parents=True, exist_ok=True)
    index = prefix.with_name(prefix.name + ".index")
    if not npy.exists():
        model, prototxt = WORK / "vgg16.caffemodel", WORK / "vgg16.prototxt"
        subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from pathlib import Path; "
                "from weightconv.testing import synthetic; "
                "net = synthetic.build('vgg16', seed=0); "
                "net.write_caffemodel(sys.argv[1]); "
                "Path(sys.argv[2]).write_text(net.deploy_prototxt)",
                str(model),
                str(prototxt),
            ],
            check=True,
        )
        subprocess.run(
            _weightconv(
                "caffe2npy",
                str(model),
                "--prototxt",
                str(prototxt),
                "-o",
                str(npy),
                "--force",
                "--quiet",
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        model.unlink()
        index.unlink(missing_ok=True)  # a checkpoint of an older .npy
    if not index.exists():
        subprocess.run(
            _weightconv("npy2ckpt", str(npy), "-o", str(prefix), "--force", "--quiet"),
            check=True,
            stdout=subprocess.DEVNULL,
        )
    # weightconv from bytecode, as after `pip install` (TensorFlow's and numpy's .pyc files
    # came with their wheels); an editable install under PYTHONDONTWRITEBYTECODE=1 would
    # otherwise compile its sources in every measured run.
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import compileall, os, weightconv; "
            "compileall.compile_dir(os.path.dirname(weightconv.__file__), quiet=1)",
        ],
        check=True,
    )
    size_mb = npy.stat().st_size / 1e6
    if not 550 < size_mb < 556:
        raise SystemExit(f"{npy}: {size_mb:.1f} MB, expected about 553 MB")
    print(f"checking {prefix.name} with TensorFlow ...", file=sys.stderr)
    check = subprocess.run(
        _script(VERIFY, str(prefix), str(npy), str(PARAMETERS)), capture_output=True, text=True
    )
    if check.returncode != 0:
        raise SystemExit(f"TensorFlow does not read {prefix} as the .npy says:\n{check.stderr}")
    print(check.stdout.strip(), file=sys.stderr)


def cases(npy: Path, prefix: Path, only: list[str]) -> list[Case]:
    out_npy, out_ckpt = str(OUT / "out.npy"), str(OUT / "out.ckpt")
    every = [
        Case("inspect", "`weightconv inspect`", _weightconv("inspect", str(prefix)), side="ours"),
        Case(
            "inspect",
            "TF `python -m tensorflow.python.tools.inspect_checkpoint`",
            [
                sys.executable,
                "-m",
                "tensorflow.python.tools.inspect_checkpoint",
                f"--file_name={prefix}",
            ],
        ),
        Case(
            "ckpt2npy",
            "`weightconv ckpt2npy` (reads, writes the .npy)",
            _weightconv("ckpt2npy", str(prefix), "-o", out_npy, "--force", "-q"),
            side="ours",
        ),
        Case(
            "ckpt2npy",
            "weightconv library: `weightconv.load` + every tensor as an array "
            "(writes nothing, like the next case)",
            _script(OURS_READ, str(prefix)),
            side="extra",
        ),
        Case(
            "ckpt2npy",
            "TF `load_checkpoint` + `get_tensor` of every tensor (writes nothing)",
            _script(TF_READ, str(prefix)),
        ),
        Case(
            "ckpt2npy",
            "TF `load_checkpoint` + `get_tensor`, then `np.save` of {layer: [W, b]}",
            _script(TF_READ_SAVE, str(prefix), out_npy),
        ),
        Case(
            "npy2ckpt",
            "`weightconv npy2ckpt`",
            _weightconv("npy2ckpt", str(npy), "-o", out_ckpt, "--force", "-q"),
            side="ours",
        ),
        Case(
            "npy2ckpt",
            "TF graph mode: `tf.Variable(array)`, `Saver().save(sess, prefix)` (+ .meta)",
            _script(TF_SAVE_GRAPH, str(npy), out_ckpt),
        ),
        Case(
            "npy2ckpt",
            "TF eager: `tf.Variable(array)`, `Saver(var_list=...).save(None, prefix)`",
            _script(TF_SAVE_EAGER, str(npy), out_ckpt),
        ),
    ]
    return [case for case in every if not only or case.group in only]


def measure_all(selected: list[Case], repeats: int) -> None:
    for round_number in range(repeats):
        order = selected if round_number % 2 == 0 else selected[::-1]
        for case in order:
            shutil.rmtree(OUT, ignore_errors=True)
            OUT.mkdir()
            os.sync()  # no write-back of the previous case's output during this one
            case.samples.append(run.measure(case.command))
            wall, rss = case.samples[-1]
            print(
                f"[{round_number + 1}/{repeats}] {case.group}: {case.label}: {wall:.2f} s, "
                f"{rss:,.0f} MB",
                file=sys.stderr,
            )
    shutil.rmtree(OUT, ignore_errors=True)


def verdicts(selected: list[Case]) -> list[str]:
    lines = []
    for group in GROUPS:
        members = [case for case in selected if case.group == group]
        if not members:
            continue
        ours = next(case for case in members if case.side == "ours")
        theirs_all = [case for case in members if case.side == "tf"]
        speedup = INSPECT_SPEEDUP if group == "inspect" else CONVERT_SPEEDUP
        missed = []
        for theirs in theirs_all:
            speed, memory = theirs.wall / ours.wall, theirs.rss / ours.rss
            met = speed >= speedup and ours.rss < theirs.rss
            conditions = [
                f"{speed:.1f}x faster (needs {speedup:.0f}x)",
                f"{memory:.1f}x less peak memory",
            ]
            if group == "inspect":
                met = met and ours.rss < INSPECT_MAX_MB
                conditions.append(f"ours {ours.rss:.0f} MB (needs under {INSPECT_MAX_MB:.0f} MB)")
            if not met:
                missed.append(theirs.label)
            lines.append(
                f"- {ours.label} vs {theirs.label}: {', '.join(conditions)}: "
                f"{'met' if met else '**NOT MET**'}."
            )
        for extra in (case for case in members if case.side == "extra"):
            theirs = theirs_all[0]
            lines.append(
                f"- (context, not the acceptance test) {extra.label} vs "
                f"{theirs.label}: {theirs.wall / extra.wall:.1f}x faster, "
                f"{theirs.rss / extra.rss:.1f}x less peak memory."
            )
        verdict = (
            "met against every TensorFlow variant"
            if not missed
            else f"NOT MET against {len(missed)} of {len(theirs_all)} TensorFlow variants"
        )
        lines += [f"- **{group}: acceptance {verdict}.**", ""]
    return lines


def _fingerprint() -> str:
    """A digest of weightconv's sources, to notice the package changing during a run."""
    spec = importlib.util.find_spec("weightconv")
    if spec is None or spec.origin is None:
        return ""
    digest = hashlib.sha256()
    for path in sorted(Path(spec.origin).parent.rglob("*.py")):
        digest.update(str(path).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _revision() -> str:
    """The repository's commit, and whether weightconv/ differs from it (read-only git)."""
    spec = importlib.util.find_spec("weightconv")
    package = Path(spec.origin).parent if spec and spec.origin else None
    if package is not None and package != HERE.parent / "weightconv":
        return f"imported from {package}, not this checkout"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=HERE,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        clean = (
            subprocess.run(
                ["git", "diff", "--quiet", "HEAD", "--", "weightconv"], cwd=HERE.parent
            ).returncode
            == 0
        )
    except (OSError, subprocess.CalledProcessError):
        return "commit unknown"
    return f"commit {commit}" + ("" if clean else ", with uncommitted changes in weightconv/")


def report(
    selected: list[Case], repeats: int, only: list[str], npy: Path, load: tuple[float, float]
) -> str:
    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    command = "python benchmarks/ckpt.py --repeats " + str(repeats)
    command += "".join(f" --only {group}" for group in only)
    rows = []
    for group in GROUPS:
        members = [case for case in selected if case.group == group]
        if members:
            rows.append(f"| **{group}** | | | |")
        rows += [
            f"| {case.label} | {case.wall:.2f} | {case.rss:,.0f} | {case.spread} |"
            for case in members
        ]
    lines = [
        "## TensorFlow checkpoints",
        "",
        f"weightconv's checkpoint verbs against TensorFlow on a generated VGG16-sized "
        f"checkpoint: {PARAMETERS:,} float32 parameters in 32 tensors (16 layers), "
        f"{npy.stat().st_size / 1e6:.0f} MB as .npy, TF1 names (`conv1_1/weights`, ...). "
        f"TensorFlow's `load_checkpoint` was checked to read it and to give values equal to "
        f"the .npy before timing.",
        f"Machine: {run.machine()}; TensorFlow {version('tensorflow')}, weightconv "
        f"{version('weightconv')} ({_revision()}).",
        f"Method: `{command}`; each case runs {repeats} times in a fresh process, every case "
        f"once per round, order reversed on alternate rounds; medians shown. Peak RSS is the "
        f"measured process's own (os.wait4). Every TensorFlow case includes `import "
        f"tensorflow`. Inputs are in the page cache; outputs are deleted and `sync` runs "
        f'before each case. TF_CPP_MIN_LOG_LEVEL=3, CUDA_VISIBLE_DEVICES=""; weightconv '
        f"byte-compiled first, as TensorFlow and numpy are. 1-minute load average "
        f"{load[0]:.2f} before the runs, {load[1]:.2f} after.",
        "",
        "| case | median wall (s) | median peak RSS (MB) | wall min-max (s) |",
        "|---|---:|---:|---:|",
        *rows,
        "",
        "Ratios (TensorFlow's median over weightconv's) and the acceptance thresholds "
        f"(inspect: {INSPECT_SPEEDUP:.0f}x faster and under {INSPECT_MAX_MB:.0f} MB; "
        f"ckpt2npy and npy2ckpt: {CONVERT_SPEEDUP:.0f}x faster and lower peak memory):",
        "",
        *verdicts(selected),
    ]
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep benchmarks/work/ckpt/")
    parser.add_argument(
        "--only",
        choices=GROUPS,
        action="append",
        default=[],
        help="run only this pair (repeatable)",
    )
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    os.environ.update(TF_ENV)
    npy, prefix = WORK / "vgg16.npy", WORK / "vgg16.ckpt"
    prepare(npy, prefix)
    os.chdir(WORK)  # no stray module in the caller's folder shadows one in a `-c` script
    selected = cases(npy, prefix, args.only)
    before, load_before = _fingerprint(), os.getloadavg()[0]
    measure_all(selected, args.repeats)
    text = report(selected, args.repeats, args.only, npy, (load_before, os.getloadavg()[0]))
    if _fingerprint() != before:
        text += (
            "\n**weightconv's sources changed during this run: the rows mix two versions; "
            "run it again.**\n"
        )
        print("warning: weightconv's sources changed during the run", file=sys.stderr)
    run.write_section("checkpoints", text)
    print(text)
    os.chdir(HERE)
    if not args.keep:
        shutil.rmtree(WORK)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
