"""cocotb testbench of one M³ViT encoder block on :class:`tessera.sim.encoder.EncoderDatapath`
(run through :func:`tessera.sim.encoder.simulate_encoder_layer`).

Reads a job (the unit configurations, the block program and an ``.npz`` with the block input,
the weights and parameters and every op's golden output) from ``$TESSERA_JOB`` and executes the
program in order: each op's inputs are earlier RTL outputs, laid out as the unit's streams (the
only host work: packing, splitting heads into column slices, joining them). Every op's output is
compared with its golden tensor; one result per op goes to the job's results file, the RTL
tensors to ``outputs.npz`` beside it. The test fails if any op fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cocotb
import numpy as np
from cocotb.triggers import RisingEdge, SimTimeoutError, with_timeout
from cocotbext.axi import (
    AxiLiteBus,
    AxiLiteMaster,
    AxiStreamBus,
    AxiStreamFrame,
    AxiStreamSink,
    AxiStreamSource,
)

from tessera.models import layernorm as ln_model
from tessera.models.attention import attention_streams
from tessera.models.epilogue import (
    from_tiles,
    pack_input,
    pack_params,
    unpack_output,
)
from tessera.models.gemm import stream_operands
from tessera.rtl.attention import REGISTERS as ATTENTION_REGISTERS
from tessera.sim.encoder import EncoderDesign, first_difference
from tessera.sim.epilogue import params_from_arrays
from tessera.sim.epilogue_testbench import now_cycles
from tessera.sim.harness import CLOCK_NS, load_job, reset_dut, set_stalls, write_results
from tessera.sim.linear_testbench import LinearPorts, limit_cycles, run_linear

ATTN_REG = {r.name: r.offset for r in ATTENTION_REGISTERS}
TIMEOUT_CYCLES = 200_000


def _stream(dut: Any, prefix: str, kind: type) -> Any:
    port = kind(AxiStreamBus.from_prefix(dut, prefix), dut.clk, dut.rst)
    port.log.setLevel("WARNING")
    return port


async def _recv(sink: Any) -> Any:
    return await with_timeout(sink.recv(compact=False), TIMEOUT_CYCLES * CLOCK_NS, "ns")


class Runner:
    """Drivers of every unit of the datapath and one coroutine per op kind."""

    def __init__(self, dut: Any, design: EncoderDesign, idle: float, backpressure: float):
        self.dut, self.design = dut, design
        self.idle, self.backpressure = idle, backpressure
        self.stream_ports: dict[str, dict[str, Any]] = {}
        stall_list = []
        for name in (*design.layernorm, *design.epilogue):
            ports = {
                "x": _stream(dut, f"{name}_x_", AxiStreamSource),
                "params": _stream(dut, f"{name}_params_", AxiStreamSource),
                "y": _stream(dut, f"{name}_y_", AxiStreamSink),
            }
            self.stream_ports[name] = ports
            stall_list += [(ports["x"], idle), (ports["params"], idle), (ports["y"], backpressure)]
        self.linear = {
            name: LinearPorts.attach(dut, f"{name}_", pair.epi.residual)
            for name, pair in design.linear.items()
        }
        for name, attn_cfg in design.attention.items():
            del attn_cfg
            csr = AxiLiteMaster(AxiLiteBus.from_prefix(dut, f"{name}_csr_"), dut.clk, dut.rst)
            for port in (csr.write_if, csr.read_if):
                port.log.setLevel("WARNING")
            ports = {s: _stream(dut, f"{name}_{s}_", AxiStreamSource) for s in "qkv"}
            ports["o"] = _stream(dut, f"{name}_o_", AxiStreamSink)
            ports["csr"] = csr
            self.stream_ports[name] = ports
            stall_list += [(ports[s], idle) for s in "qkv"] + [(ports["o"], backpressure)]
        self.stall_list = stall_list

    def set_stalls(self, seed: int) -> None:
        set_stalls(self.stall_list, seed)
        for i, ports in enumerate(self.linear.values()):
            ports.set_stalls(self.idle, self.backpressure, seed + 1 + i)

    async def layernorm(self, op: dict, x: np.ndarray, data: Any) -> tuple[np.ndarray, int, None]:
        cfg = self.design.layernorm[op["unit"]]
        ports = self.stream_ports[op["unit"]]
        name = op["name"]
        ports["params"].send_nowait(
            AxiStreamFrame(ln_model.pack_params(data[f"{name}.gamma"], data[f"{name}.beta"], cfg))
        )
        await ports["params"].wait()
        await RisingEdge(self.dut.clk)
        start = now_cycles()
        for row in x:
            ports["x"].send_nowait(AxiStreamFrame(ln_model.pack_rows(row, cfg)))
        rows = []
        for _ in range(len(x)):
            frame = await _recv(ports["y"])
            rows.append(ln_model.unpack_outputs(bytes(frame.tdata), cfg))
        return np.stack(rows), round(now_cycles() - start), None

    async def epilogue(self, op: dict, acc: np.ndarray, data: Any) -> tuple[np.ndarray, int, None]:
        cfg = self.design.epilogue[op["unit"]]
        ports = self.stream_ports[op["unit"]]
        m, n = acc.shape
        ports["params"].send_nowait(
            AxiStreamFrame(pack_params(params_from_arrays(data, f"{op['name']}."), m, cfg))
        )
        await ports["params"].wait()
        await RisingEdge(self.dut.clk)
        start = now_cycles()
        tdata, tkeep = pack_input(acc, cfg)
        ports["x"].send_nowait(AxiStreamFrame(tdata, tkeep=tkeep))
        frame = await _recv(ports["y"])
        values, _ = unpack_output(bytes(frame.tdata), list(frame.tkeep), cfg)
        return from_tiles(values, m, n, cfg), round(now_cycles() - start), None

    async def linear_op(
        self, op: dict, inputs: list[np.ndarray], data: Any
    ) -> tuple[np.ndarray, int, int]:
        pair = self.design.linear[op["unit"]]
        a, w = inputs[0], data[f"{op['name']}.w"]
        (m, k), n = a.shape, w.shape[1]
        a_beats, b_beats = stream_operands(a, w, pair.gemm)
        run = await run_linear(
            self.dut,
            self.linear[op["unit"]],
            pair,
            a_beats,
            b_beats,
            params_from_arrays(data, f"{op['name']}."),
            m,
            n,
            k,
            inputs[1] if len(inputs) > 1 else None,
            limit_cycles(m, n, k, pair, self.idle, self.backpressure) + 1000,
        )
        if run.frame is None or run.message != "ok":
            raise RuntimeError(f"{op['name']}: {run.message}")
        values, _ = unpack_output(bytes(run.frame.tdata), list(run.frame.tkeep), pair.epi)
        return from_tiles(values, m, n, pair.epi), run.cycles, run.gemm_cycles

    async def attention(
        self, op: dict, inputs: list[np.ndarray], data: Any
    ) -> tuple[np.ndarray, int, int]:
        cfg = self.design.attention[op["unit"]]
        ports = self.stream_ports[op["unit"]]
        csr = ports["csr"]
        lo, hi = op["settings"]["columns"]
        q, k, v = (t[None, :, lo:hi] for t in inputs)  # the head's column slice
        seq_len = q.shape[1]
        for name, value in (
            ("SEQ_LEN", seq_len),
            ("MULTIPLIER", op["settings"]["multiplier"]),
            ("SHIFT", op["settings"]["shift"]),
            ("MASK", 0),
            ("SINK", 0),
            ("WINDOW", 0),
        ):
            await csr.write_dword(ATTN_REG[name], value)
        streams = attention_streams(q, k, v, cfg)
        for s in "qkv":
            ports[s].send_nowait(AxiStreamFrame(np.ascontiguousarray(streams[s]).tobytes()))
        await csr.write_dword(ATTN_REG["CTRL"], 1)
        await RisingEdge(self.dut.clk)
        start = now_cycles()
        frame = await _recv(ports["o"])
        cycles = round(now_cycles() - start)
        status = await csr.read_dword(ATTN_REG["CTRL"])
        engine = await csr.read_dword(ATTN_REG["CYCLES"])
        if status & 0b111 != 0b010:
            raise RuntimeError(f"{op['name']}: attention CTRL status {status:#x}")
        out = np.frombuffer(bytes(frame.tdata), dtype=np.int8).astype(np.int64)
        return out.reshape(seq_len, hi - lo), cycles, engine


@cocotb.test()
async def encoder_block(dut: Any) -> None:
    """Execute the block program on the DUT, op by op, on one reset."""
    job = load_job()
    design = EncoderDesign.from_dict(job["design"])
    data = np.load(job["data"])
    await reset_dut(dut)
    runner = Runner(dut, design, job.get("idle", 0.0), job.get("backpressure", 0.0))
    runner.set_stalls(job.get("seed", 0))

    tensors: dict[str, np.ndarray] = {"x": data["x"].astype(np.int64)}
    results: list[dict[str, Any]] = []
    outputs_path = Path(job["results"]).parent / "outputs.npz"
    for op in job["program"]:
        inputs = [tensors[name] for name in op["inputs"]]
        if op["kind"] == "concat":  # host data movement only
            tensors[op["name"]] = np.concatenate(inputs, axis=1)
            continue
        engine = None
        try:
            if op["kind"] == "layernorm":
                out, cycles, engine = await runner.layernorm(op, inputs[0], data)
            elif op["kind"] == "epilogue":
                out, cycles, engine = await runner.epilogue(op, inputs[0], data)
            elif op["kind"] == "linear":
                out, cycles, engine = await runner.linear_op(op, inputs, data)
            elif op["kind"] == "attention":
                out, cycles, engine = await runner.attention(op, inputs, data)
            else:
                raise RuntimeError(f"unknown op kind {op['kind']!r}")
        except (SimTimeoutError, RuntimeError) as exc:
            message = f"{type(exc).__name__}: {exc}" if str(exc) else "timeout"
            results.append(_result(op, False, message, None, 0, None))
            write_results(job, results)
            break
        tensors[op["name"]] = out
        mismatch = first_difference(op["name"], out, data[f"expected.{op['name']}"])
        message = "ok"
        if mismatch is not None:
            message = (
                f"first mismatch in {mismatch['tensor']} at token {mismatch['token']}, column "
                f"{mismatch['column']}: expected {mismatch['expected']}, got {mismatch['received']}"
            )
        dut._log.info("op %s on %s: %s, %d cycles", op["name"], op["unit"], message, cycles)
        results.append(_result(op, mismatch is None, message, mismatch, cycles, engine))
        write_results(job, results)
    np.savez(outputs_path, **{k: v for k, v in tensors.items() if k != "x"})
    bad = [r for r in results if not r["passed"]]
    assert not bad, bad[0]["message"]


def _result(
    op: dict, passed: bool, message: str, mismatch: Any, cycles: int, engine: int | None
) -> dict[str, Any]:
    return {
        "name": op["name"],
        "kind": op["kind"],
        "unit": op["unit"],
        "passed": passed,
        "message": message,
        "mismatch": mismatch,
        "cycles": cycles,
        "engine_cycles": engine,
    }
