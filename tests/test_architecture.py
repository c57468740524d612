"""The package layout tells the pipeline: imports flow one way (no circles, never from a lower
stage to a higher one), board kinds live behind the platform interface, operators in one
registry, and target files are checked against a schema."""

import ast
import importlib
import re
from pathlib import Path

import pytest

from edgecompile.errors import TargetError, UnsupportedModelError
from edgecompile.ir import operators, quantize
from edgecompile.platforms import PLATFORMS
from edgecompile.targets import FAMILIES, PLATFORMS as TARGET_PLATFORMS, parse_target

from helpers import REPO, run_cli

PACKAGE = REPO / "edgecompile"

# Stage of every module, lowest first: a module imports only modules of its stage or below.
LAYERS = [
    ("errors", "proc", "paths", "datasets", "build_dir", "__init__"),
    ("targets", "models"),
    ("ir",),
    ("schedules",),
    ("codegen", "device"),
    ("platforms", "tune.records"),
    ("compiler",),
    ("tune",),
    ("measure", "training"),
    ("cli", "__main__"),
]


def _layer(module: str) -> int:
    """The layer of `edgecompile.<module>`: the longest matching prefix in LAYERS."""
    best, rank = -1, None
    for i, names in enumerate(LAYERS):
        for n in names:
            if (module == n or module.startswith(n + ".")) and len(n) > best:
                best, rank = len(n), i
    assert rank is not None, f"module edgecompile.{module} is in no layer of this test"
    return rank


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path) -> set[str]:
    """edgecompile modules imported anywhere in the file (function-level imports included)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("edgecompile."):
                    found.add(a.name[len("edgecompile."):])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("edgecompile"):
                mod = node.module[len("edgecompile."):] if node.module != "edgecompile" else ""
            else:
                continue
            for a in node.names:     # `from . import tiling` imports the module edgecompile.<base>.tiling
                sub = f"{mod}.{a.name}" if mod else a.name
                found.add(sub if sub in _MODULES else mod)
    return {m for m in found if m}


_MODULES = _modules()


def test_imports_flow_from_higher_stages_to_lower_ones_only():
    bad = []
    for name, path in sorted(_MODULES.items()):
        for imp in sorted(_imports(name, path)):
            if _layer(imp) > _layer(name):
                bad.append(f"edgecompile.{name} imports edgecompile.{imp}")
    assert not bad, "\n".join(bad)


def test_no_import_circles():
    graph = {name: {i for i in _imports(name, path) if i in _MODULES and i != name} for name, path in _MODULES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                cycle = stack[stack.index(m):] + [m]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_board_kinds_are_tested_only_inside_the_platforms():
    pattern = re.compile(r"\.(platform|firmware)\s*[!=]=|target\.name\s*[!=]=|family\s*[!=]=\s*\"")
    offenders = []
    for name, path in _MODULES.items():
        if name.startswith("platforms") or name == "targets":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_every_family_and_platform_has_its_module():
    for family in FAMILIES:
        mod = importlib.import_module(f"edgecompile.schedules.{family}")
        assert mod.LANES >= 1 and hasattr(mod.RULES, "rule_for"), family
    assert set(PLATFORMS) == set(TARGET_PLATFORMS)
    for kind in PLATFORMS:
        platform = importlib.import_module(f"edgecompile.platforms.{PLATFORMS[kind]}").PLATFORM
        assert platform.kind == kind
        assert (REPO / "firmware_templates" / kind).is_dir() or kind == "host"


def test_every_int8_rule_named_by_the_registry_exists_and_is_used():
    named = {op.int8 for op in operators.REGISTRY if op.int8}
    assert named == set(quantize.RULES)
    assert len({op.relax for op in operators.REGISTRY if op.relax}) == len([op for op in operators.REGISTRY if op.relax])


def test_an_unknown_reduction_is_an_error_naming_the_block():
    from tvm.script import tirx as T

    from edgecompile.ir.kernel import analyze

    @T.prim_func(s_tir=True)
    def weird(a: T.Buffer((4, 8), "float32"), b: T.Buffer((4,), "float32")) -> None:
        for i, k in T.grid(4, 8):
            with T.sblock("T_mystery"):
                vi, vk = T.axis.remap("SR", [i, k])
                with T.init():
                    b[vi] = T.float32(0)
                b[vi] = b[vi] + a[vi, vk] * a[vi, vk]

    with pytest.raises(UnsupportedModelError, match="reduction block 'T_mystery'.*no registered operator"):
        analyze(weird, "fused_mystery")


def test_an_onnx_operator_outside_the_registry_is_refused_with_its_node(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("LpNormalization", ["x"], ["y"], name="norm7")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "m.onnx")
    proc = run_cli("build", str(tmp_path / "m.onnx"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 1 and "node 'norm7' uses unsupported operator LpNormalization" in proc.stderr
    assert "LpNormalization" not in operators.ONNX_ACCEPTED


# ----------------------------------------------------------------------------- typed target files

BOARD = """
name = "b"
family = "cortex_m"
cpu = "cortex-m4"
platform = "cortex_m"
[tvm]
kind = "c"
[toolchain]
cc = "arm-none-eabi-gcc"
[emulator]
program = "qemu-system-arm"
machine = "mps2-an386"
"""


@pytest.mark.parametrize("text,fragment", [
    (BOARD.replace('machine = "mps2-an386"', 'machin = "mps2-an386"'), "x.toml: emulator.machin: unknown key"),
    (BOARD + "clock_hz = \"fast\"\n", "clock_hz: expected an integer"),
    (BOARD.replace('family = "cortex_m"', 'family = "vax"'), "family must be one of"),
    (BOARD.replace('[toolchain]\ncc = "arm-none-eabi-gcc"', ''), "toolchain: missing"),
    (BOARD + '[flash]\nmethods = "pyocd"\n', "flash.methods: expected a list"),
    (BOARD + '[[memory]]\nname = "RAM"\norigin = 0\nsize = "lots"\nkind = "ram"\n', "cannot read size 'lots'"),
    (BOARD + 'relocate = { NOPE = 0 }\n', "emulator.relocate.NOPE: no memory region"),
])
def test_a_typo_in_a_board_file_names_the_file_and_the_key(text, fragment):
    import tomllib

    with pytest.raises(TargetError) as err:
        parse_target(tomllib.loads(text), "x.toml")
    assert fragment in str(err.value)


def test_a_uart_driver_without_a_template_is_refused_before_the_compile(tmp_path):
    (tmp_path / "t").mkdir()
    text = (REPO / "targets" / "mps2-an386.toml").read_text().replace('name = "mps2-an386"', 'name = "odd"')
    (tmp_path / "t" / "odd.toml").write_text(text.replace('driver = "cmsdk"', 'driver = "pl011"'))
    proc = run_cli("build", "mobilenet_v1", "--width-mult", "0.25", "--resolution", "32", "--num-classes", "10",
                   "--target", "odd", "--targets-dir", str(tmp_path / "t"), "--out", str(tmp_path / "o"))
    assert proc.returncode == 1 and "uart.driver must be one of cmsdk, stm32_v1, stm32_v2" in proc.stderr
    assert "odd.toml" in proc.stderr and "[" not in proc.stderr.split("error:")[0]   # no compile progress first
