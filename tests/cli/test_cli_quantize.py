"""`tessera quantize m3vit`: the report, the saved network, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tessera.cli.main import main
from tessera.models.m3vit import digits_tasks, load_m3vit
from tessera.models.m3vit_quant import PRESETS, QuantM3ViT, load_quant_m3vit

FAST = ["--calibration", "32", "--test-images", "24"]


def _accuracy(predictions: np.ndarray, labels: torch.Tensor) -> float:
    return int((predictions == labels.numpy()).sum()) / len(labels)


def test_quantize_json_report_matches_the_saved_network(tmp_path: Path, capsys) -> None:
    out = tmp_path / "net.npz"
    args = ["quantize", "m3vit", "--preset", "w2a8kv4", *FAST, "-o", str(out), "--json"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["preset"] == PRESETS["w2a8kv4"].to_dict()
    assert report["calibration_images"] == 32 and report["test_images"] == 24
    assert report["output"] == str(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["net.npz"]
    # Recompute both accuracies independently from the saved network and the float weights.
    qm = load_quant_m3vit(out)
    assert qm.preset == PRESETS["w2a8kv4"]
    model, _ = load_m3vit()
    _, test = digits_tasks(0)
    images, labels = test.images[:24], test.labels[:24]
    for task, name in enumerate(("digit", "parity")):
        with torch.no_grad():
            float_pred = model(images, task).argmax(-1).numpy()
        assert report["float_accuracy"][name] == _accuracy(float_pred, labels[:, task])
        int_acc = _accuracy(qm.predict(images, task), labels[:, task])
        assert report["integer_accuracy"][name] == int_acc
        assert 0.5 <= int_acc <= 1.0  # 2-bit weights cost points but keep a working network


def test_quantize_table_and_default_weights(tmp_path: Path, capsys) -> None:
    out = tmp_path / "sub" / "edge.npz"
    assert main(["quantize", "m3vit", "--preset", "edge-moe", *FAST, "-o", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(PRESETS["edge-moe"].short_name)
    rows = {line.split()[0]: line.split() for line in lines[3:5]}
    assert set(rows) == {"digit", "parity"}
    for row in rows.values():
        float_acc, int_acc = float(row[1]), float(row[3])
        # Measured: edge-moe matches float on these images.
        assert abs(float_acc - int_acc) <= 100 / 24 + 1e-9
    assert lines[-1].startswith(f"saved the integer network to {out}")
    qm = load_quant_m3vit(out)
    assert isinstance(qm, QuantM3ViT) and qm.preset.power_of_two


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tessera.cli.main", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )


def test_unknown_preset_is_one_line_exit_2(tmp_path: Path) -> None:
    proc = _run("quantize", "m3vit", "--preset", "int3", "-o", "x.npz", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tessera: error: unknown preset 'int3'")
    for name in PRESETS:
        assert name in lines[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--weights", "MISSING"], "no M3ViT weights at"),
        (["--weights", "CORRUPT"], "cannot read M3ViT weights at"),
        (["--calibration", "0"], "--calibration must be in [1, "),
        (["--test-images", "100000"], "--test-images must be in [1, "),
        (["-o", "DIR"], "is a directory"),
        (["--preset"], "expected one argument"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    extra: list[str], message: str, tmp_path: Path, capsys
) -> None:
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x02 this is not a torch checkpoint" * 10)
    (tmp_path / "outdir").mkdir()
    names = {"MISSING": tmp_path / "none.pt", "CORRUPT": corrupt, "DIR": tmp_path / "outdir"}
    extra = [str(names.get(a, a)) for a in extra]
    args = ["quantize", "m3vit", "-o", str(tmp_path / "q.npz"), *FAST, *extra]
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("tessera: error:"), lines
    assert message in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.pt", "outdir"]
    assert list((tmp_path / "outdir").iterdir()) == []


def test_write_failure_is_exit_1_and_leaves_nothing(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tessera.models import m3vit_quant

    def full_disk(f, **arrays) -> None:
        f.write(b"PK partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(m3vit_quant.np, "savez_compressed", full_disk)
    out = tmp_path / "q.npz"
    args = ["quantize", "m3vit", "--calibration", "8", "--test-images", "4", "-o", str(out)]
    assert main(args) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == f"tessera: error: cannot write {out}: [Errno 28] No space left on device"
    assert list(tmp_path.iterdir()) == []
