"""`tessera run`: mixed-device inference over the test split, and one-line errors."""

from __future__ import annotations

import json

import pytest

from tessera.cli.main import main
from tessera.models.m3vit import digits_tasks, load_m3vit
from tessera.models.m3vit_quant import quantize_m3vit


def test_run_reports_accuracy_and_placement(capsys) -> None:  # type: ignore[no-untyped-def]
    args = ["run", "--devices", "cpu,fpga:emu", "--task", "1", "--images", "24", "--batch", "8"]
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 24 and report["runs"] == 3
    assert {d["name"] for d in report["devices"]} == {"cpu", "fpga:emu"}
    assert len(report["plans"]) == 1 and report["plans"][0]["batch"] == 8
    # Every op placed; accuracy recomputed from the network the placement stands for.
    placement = report["plans"][0]["placement"]
    model, cfg = load_m3vit()
    train, test = digits_tasks()
    images, labels = test.images[:24], test.labels[:24, 1].numpy()
    if set(placement.values()) == {"fpga:emu"}:
        qm = quantize_m3vit(model, cfg, train.images[:256], "int8")
        expected = float((qm.predict(images, 1) == labels).mean())
        assert report["tasks"]["1"]["accuracy"] == expected
    assert report["tasks"]["1"]["agreement_with_float"] >= 0.9
    assert report["modelled_seconds"] > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--devices", "cpu,tpu"], "unknown device 'tpu'"),
        (["--model", "resnet"], "unknown model 'resnet'"),
        (["--preset", "int3"], "unknown preset 'int3'"),
        (["--link", "usb"], "unknown link 'usb'"),
        (["--batch", "0"], "--batch must be >= 1"),
    ],
)
def test_run_bad_input_is_one_line_exit_2(args: list[str], message: str, capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as exc:
        main(["run", *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
