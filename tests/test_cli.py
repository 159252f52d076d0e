"""The command line: every command runs, errors are one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from advguard.cli import main


def test_data_list_and_info(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "fashion-mnist-sample" in out and "cifar10" in out
    assert main(["data", "info", "fashion-mnist-sample", "--load"]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "1000 images" in out


def test_models_list_with_pattern_and_flops(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list", "resnet2*", "--flops"]) == 0
    out = capsys.readouterr().out
    assert "resnet20" in out and "resnet18" not in out
    assert "40.6" in out  # MMACs of ResNet-20 at 32x32


def test_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--model", "resnet2", "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("advguard: error: unknown model 'resnet2'")
    assert "did you mean" in err[0]
    assert main(["data", "info", "nope"]) == 2
    assert main(["train", "--set", "oops"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_help_for_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    """Every command and subcommand of the real parser, found by walking its subparsers."""
    import argparse

    from advguard.cli import build_parser

    def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
                 ) -> list[tuple[str, ...]]:
        found = [path]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found += commands(sub, (*path, name))
        return found

    every = commands(build_parser())
    assert ("data", "list") in every and ("train",) in every  # the walk reaches subcommands
    for path in every:
        with pytest.raises(SystemExit) as exc:
            main([*path, "--help"])
        assert exc.value.code == 0, path
        out, err = capsys.readouterr()
        assert out.split()[: len(path) + 2] == ["usage:", "advguard", *path], out[:80]
        assert err == ""


def test_train_command_writes_a_checkpoint(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("model: lenet5\nbatch_size: 50\ntrain_size: 100\ntest_size: 50\n"
                      "device: cpu\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(config), "--epochs", "1", "--output", str(out),
                 "--quiet", "--set", "lr=0.02"]) == 0
    assert (out / "model.safetensors").exists() and (out / "record.json").exists()
    assert "checkpoint:" in capsys.readouterr().out
    assert "lr: 0.02" in (out / "config.yaml").read_text()


def test_quickstart_prints_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["quickstart", "--epochs", "2", "--n", "40", "--quiet", "--output",
                 str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = {line.split("  ")[0]: line for line in out.splitlines()}
    assert "zero_gradients" in lines["bit depth, naive attack (no BPDA)"]
    assert "randomized_output" in lines["Gaussian noise (σ=0.2)"]
    for row in ("CAP (N=9, α=0.05, μ=0.1)", "SMOOTH (m=8, σ=0.2, prediction vote)"):
        cells = [c.strip() for c in lines[row].split("  ") if c.strip()]
        clean, oblivious, worst = (float(c) for c in cells[1:4])
        assert worst <= oblivious <= clean  # the cascade's worst case never exceeds a step of it
    assert (tmp_path / "model" / "model.safetensors").exists()
    assert (tmp_path / "records.sqlite").exists()
    # rows at the reduced preset are named, with the command of the full-strength evaluation
    assert "quick (reduced)" in lines["SMOOTH (m=8, σ=0.2, prediction vote)"]
    assert "standard" in lines["no defense"]
    assert f"advguard eval --model {tmp_path}/model/model.safetensors" in out
    assert "--preset auto" in out and "Reduced budget" in out
