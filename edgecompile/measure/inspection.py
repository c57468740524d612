"""`edgecompile inspect`: per-layer cost of a model (MACs, parameters, activation bytes) and the
share of each layer kind, as in Table 2 of the MobileNet paper.

PyTorch models (zoo, nn.Module factories) are measured with forward hooks on their leaf modules,
so parameter totals are exactly PyTorch's own count (BatchNorm included, under `other`). ONNX
files are measured from the graph after shape inference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..ir.frontend import ModelSource
from ..ir.operators import onnx_layer

LAYER_KINDS = ("conv", "conv_dw", "conv_pw", "conv_group", "fc", "pool", "other")


@dataclass
class Layer:
    name: str
    kind: str
    op: str
    output_shape: list[int]
    macs: int
    params: int
    activation_bytes: int


def conv_kind(in_ch: int, out_ch: int, groups: int, kh: int, kw: int) -> str:
    if groups == 1:
        return "conv_pw" if (kh, kw) == (1, 1) else "conv"
    if groups == in_ch and out_ch % in_ch == 0:
        return "conv_dw"
    return "conv_group"


def _torch_layers(source: ModelSource) -> list[Layer]:
    import torch
    from torch import nn

    module = source.torch_module
    layers: list[Layer] = []
    hooks = []

    def hook(name: str, m: nn.Module):
        def fn(_m: nn.Module, _inp: Any, out: Any) -> None:
            out_t = out[0] if isinstance(out, (tuple, list)) else out
            shape = list(out_t.shape)
            elems = int(np.prod(shape))
            params = sum(p.numel() for p in m.parameters(recurse=False))
            macs = 0
            if isinstance(m, nn.Conv2d):
                kh, kw = m.kernel_size
                kind = conv_kind(m.in_channels, m.out_channels, m.groups, kh, kw)
                macs = elems * (m.in_channels // m.groups) * kh * kw
            elif isinstance(m, nn.Linear):
                kind = "fc"
                macs = m.in_features * m.out_features * (elems // m.out_features)
            elif isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
                kind = "pool"
            else:
                kind = "other"
            layers.append(Layer(name, kind, type(m).__name__, shape, macs, params, elems * out_t.element_size()))
        return fn

    for name, m in module.named_modules():
        if len(list(m.children())) == 0:
            hooks.append(m.register_forward_hook(hook(name, m)))
    try:
        with torch.no_grad():
            module(*[torch.zeros(i.shape) for i in source.inputs])
    finally:
        for h in hooks:
            h.remove()
    # parameters held by non-leaf modules (rare): account for them so totals stay exact
    leaf_params = sum(layer.params for layer in layers)
    total = sum(p.numel() for p in module.parameters())
    if total != leaf_params:
        layers.append(Layer("(non-leaf parameters)", "other", "-", [], 0, total - leaf_params, 0))
    return layers


def _onnx_layers(source: ModelSource) -> list[Layer]:
    import onnx
    from onnx import numpy_helper

    graph = source.onnx_model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    shapes: dict[str, list[int]] = {}
    for vi in list(graph.value_info) + list(graph.output) + list(graph.input):
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    layers = []
    counted: set[str] = set()
    for i, node in enumerate(graph.node):
        out = shapes.get(node.output[0], [])
        elems = int(np.prod(out)) if out else 0
        params = 0
        for name in node.input:
            if name in inits and name not in counted:
                params += int(inits[name].size)
                counted.add(name)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        macs, kind = 0, onnx_layer(node.op_type)
        if kind == "conv" and node.input[1] in inits:
            w = inits[node.input[1]]
            groups = int(attrs.get("group", 1))
            kind = conv_kind(w.shape[1] * groups, w.shape[0], groups, w.shape[2], w.shape[3])
            macs = elems * w.shape[1] * w.shape[2] * w.shape[3]
        elif kind == "fc" and len(node.input) > 1:
            k = shapes.get(node.input[0], [0])[-1]
            macs = elems * k
        layers.append(Layer(node.name or f"{node.op_type}_{i}", kind, node.op_type, out, macs, params, elems * 4))
    return layers


def inspect_model(source: ModelSource) -> dict[str, Any]:
    layers = _torch_layers(source) if source.torch_module is not None else _onnx_layers(source)
    macs = sum(layer.macs for layer in layers)
    params = sum(layer.params for layer in layers)
    by_kind = {}
    for kind in LAYER_KINDS:
        k_macs = sum(layer.macs for layer in layers if layer.kind == kind)
        k_params = sum(layer.params for layer in layers if layer.kind == kind)
        by_kind[kind] = {
            "macs": k_macs,
            "params": k_params,
            "macs_share": k_macs / macs if macs else 0.0,
            "params_share": k_params / params if params else 0.0,
        }
    return {
        "model": source.name,
        "options": source.options,
        "input_shape": list(source.inputs[0].shape),
        "macs": macs,
        "params": params,
        "activation_bytes_max": max((layer.activation_bytes for layer in layers), default=0),
        "by_kind": by_kind,
        "layers": [asdict(layer) for layer in layers],
    }


def memory_plan(source: ModelSource, target: Any, options: Any, progress: Any) -> dict[str, Any]:
    """The memory planning `build` would do for `target` (kernels lowered, no C compiled): the
    arena, the estimated peak RAM, the patch plan and every plan tried with its cost."""
    from ..compiler import _patch_record, compile_model

    from ..codegen import memory

    compiled = compile_model(source, target, options, progress)
    planning = compiled.planning or {}
    chosen = planning.get("chosen") or {}
    step, top = memory.arena_peak(compiled.plan)
    symbols = [c["name"] for c in compiled.calls]
    return {"target": target.name, "quant": (compiled.quant or {}).get("dtype", "fp32"),
            "arena_bytes": compiled.plan.arena_bytes, "peak_ram_estimate": chosen.get("peak_ram_estimate"),
            "macs": sum(c["macs"] for c in compiled.calls), "calls": len(compiled.calls),
            "patch_plan": _patch_record(compiled), "tried": planning.get("tried", []),
            "chosen": planning.get("chosen"), "max_instructions": planning.get("max_instructions"),
            "model_error": planning.get("model_error"),
            "predicted_plain_instructions": planning.get("predicted_plain_instructions"),
            "lowerings": planning.get("lowerings"),
            "in_place": [{"call": c["index"], "kernel": c["name"], "kind": str(c["kind"])}
                         for c in compiled.calls if c["in_place"]],
            "arena_peak": {"call": step, "kernel": symbols[step] if 0 <= step < len(symbols) else None,
                           "top": top, "live": memory.live_at(compiled.program, compiled.plan, step, symbols)}}


def _tiles_text(pp: dict[str, Any]) -> str:
    """How a patch stage is cut: full-width row bands, or 2-D tiles (rows x column tiles)."""
    if pp.get("cols", 1) <= 1:
        return f"{pp['bands']} bands of {pp['rows']} rows"
    widths = sorted({b - a for a, b in pp["band_cols"]})
    return (f"{pp['tiles']} 2-D tiles ({pp['bands']} row bands of {pp['rows']} rows x {pp['cols']} column tiles of "
            f"{'-'.join(map(str, [widths[0], widths[-1]] if len(widths) > 1 else widths))} columns)")


def _format_memory_plan(m: dict[str, Any]) -> list[str]:
    pp = m["patch_plan"]
    lines = ["", f"memory plan for {m['target']} ({m['quant']}): arena {m['arena_bytes']:,} B"
             + (f", peak RAM about {m['peak_ram_estimate']:,} B" if m["peak_ram_estimate"] else "")
             + f", {m['macs']:,} MACs in {m['calls']} calls"]
    if pp:
        lines.append(f"patch stage: the first {pp['layers']} layers in {_tiles_text(pp)} of "
                     f"{'x'.join(map(str, pp['stage_output_shape'][1:]))}, " + _halo_text(pp))
        if pp.get("arena_bytes_before") is not None:
            lines.append(f"patch stage memory: arena {pp['arena_bytes_before']:,} B plain -> {pp['arena_bytes_after']:,} B"
                         + (f", peak RAM about {pp['peak_ram_estimate_before']:,} -> {pp['peak_ram_estimate_after']:,} B"
                            if pp.get("peak_ram_estimate_before") else ""))
        s2, nth = pp.get("second_stage"), 2
        while s2:
            lines.append(f"{'second' if nth == 2 else 'third' if nth == 3 else f'{nth}th'} patch stage: "
                         f"{s2['layers']} more layers in {_tiles_text(s2)} "
                         f"of {'x'.join(map(str, s2['stage_output_shape'][1:]))}, " + _halo_text(s2))
            s2, nth = s2.get("second_stage"), nth + 1
        rows = pp.get("input_rows")
        if pp.get("input_streamed") and rows:
            lines.append(f"input streamed: {rows['reads']} reads of input rows (ec_read_input_rows), at most "
                         f"{rows['max_rows_held']} of {rows['rows_per_image']} rows held ({rows['max_bytes_held']:,} B), "
                         f"{rows['rows_read']} rows read an inference (halo rows read again)")
        else:
            lines.append("input not streamed: the whole input is in the arena")
    else:
        lines.append("no patch stage")
    ip = m.get("in_place", [])
    if ip:
        kinds = {"dwpw": "fused depthwise+pointwise", "conv_dw": "depthwise"}
        counts = {k: sum(c["kind"] == k for c in ip) for k in dict.fromkeys(c["kind"] for c in ip)}
        lines.append(f"in place: {len(ip)} kernel outputs over the input rows they consumed ("
                     + ", ".join(f"{n} {kinds.get(k, k)}" for k, n in counts.items())
                     + "): calls " + ", ".join(str(c["call"]) for c in ip))
    else:
        lines.append("in place: none")
    peak = m.get("arena_peak")
    if peak and peak["live"]:
        at = f"call {peak['call']} ({peak['kernel']})" if peak["kernel"] else "the graph input/output"
        lines.append(f"arena peak {peak['top']:,} B at {at}; buffers live there:")
        lines.append(f"  {'offset':>9} {'bytes':>9} {'shape':>18} {'dtype':7} {'written by':32} {'last read by':32} name")
        for b in peak["live"]:
            shape = "x".join(map(str, b["shape"]))
            lines.append(f"  {b['offset']:>9,} {b['bytes']:>9,} {shape:>18} {b['dtype']:7} {b['written_by'][:32]:32} "
                         f"{b['last_read_by'][:32]:32} {b['name']}")
    if m["tried"]:
        lines.append(f"{'plan tried':58} {'arena':>9} {'peak RAM est.':>14} {'extra MACs':>12} {'B copied':>9} "
                     f"{'pred. instr.':>12}")
        for t in m["tried"]:
            what = f"{t['patch'][0]} layers x {t['patch'][1]} rows" if t["patch"] else "no patches"
            if t.get("halo") in ("cached", "narrow"):
                what += f", halo {t['halo']}"
            for st in t.get("later_stages") or []:
                what += f" + {st[0]}:{st[1]}" + (f":{st[2]}" if st[2] != "recomputed" else "")
            if t["lean_windows"]:
                what += ", lean windows" + (f" in {t['lean_kernels']}" if t.get("lean_kernels") else "")
            if t.get("dwpw_rows"):
                what += f", {t['dwpw_rows']}-row dw+pw" + (f" in {t['dwpw_rows_kernels']}"
                                                           if t.get("dwpw_rows_kernels") else "")
            est = f"{t['peak_ram_estimate']:,}" if t["peak_ram_estimate"] is not None else "-"
            ratio = f"{t['predicted_ratio']:.3f}x" if t.get("predicted_ratio") else "-"
            lines.append(f"{what:58} {t['arena_bytes']:>9,} {est:>14} {t['extra_macs']:>+12,} "
                         f"{t.get('bytes_copied', 0):>9,} {ratio:>12}"
                         + (f"  ({t['peak_ram_untrimmed']:,} B untrimmed)" if t.get("peak_ram_untrimmed") else "")
                         + (f"  {t['note']}" if t.get("note") else ""))
        if m.get("chosen"):
            c = m["chosen"]
            lines.append(f"chosen: predicted {c['predicted_instructions']:,} instructions, {c['predicted_ratio']:.3f}x the "
                         f"plain plan's {m['predicted_plain_instructions']:,} (bound {m['max_instructions']}x for min)"
                         + (f"; {m['lowerings']} lowerings" if m.get("lowerings") else ""))
    return lines


def _halo_text(pp: dict[str, Any]) -> str:
    """How a patch stage has its halo rows: recomputed (extra MACs) or cached (rows copied)."""
    if pp.get("halo") in ("cached", "narrow"):
        return (f"halo rows cached: {pp['rows_copied']:,} rows kept from band to band, {pp['bytes_copied']:,} B "
                f"copied, {pp['extra_macs']:+,} MACs")
    return f"{pp['extra_macs']:+,} MACs recomputed"


def format_inspection(info: dict[str, Any]) -> str:
    lines = [f"{'layer':40} {'kind':10} {'output':>18} {'MACs':>14} {'params':>11} {'act bytes':>11}"]
    for layer in info["layers"]:
        if layer["kind"] == "other" and not layer["params"]:
            continue
        shape = "x".join(str(d) for d in layer["output_shape"])
        lines.append(f"{layer['name'][:40]:40} {layer['kind']:10} {shape:>18} {layer['macs']:>14,} "
                     f"{layer['params']:>11,} {layer['activation_bytes']:>11,}")
    lines.append("")
    lines.append(f"{info['model']}  input {'x'.join(map(str, info['input_shape']))}: "
                 f"{info['macs']:,} MACs, {info['params']:,} parameters")
    lines.append(f"{'kind':10} {'MACs':>16} {'share':>7} {'params':>12} {'share':>7}")
    for kind, v in info["by_kind"].items():
        if v["macs"] or v["params"]:
            lines.append(f"{kind:10} {v['macs']:>16,} {v['macs_share']:>7.2%} {v['params']:>12,} {v['params_share']:>7.2%}")
    lines.append("(activation layers without parameters are omitted from the table; --json lists all)")
    if "memory_plan" in info:
        lines += _format_memory_plan(info["memory_plan"])
    return "\n".join(lines)
