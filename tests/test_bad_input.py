"""Bad input, tried as a careless user would: every case is one clear error (CLI: one line on
stderr, exit status 2, no traceback, the offending value named; API: a typed advguard exception),
or — where the input is legal but not what was meant — a warning in the output and in the
record. Files whose loss is at stake are in tests/test_bad_input_files.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.test_data import write_cifar10, write_idx_dataset
from torch import nn

from advguard.attacks import PGD, make_attack
from advguard.checkpoint import save_checkpoint
from advguard.cli import main
from advguard.defenses import build_defense
from advguard.errors import AdvguardError, CheckpointError, ConfigError, InputValidationError
from advguard.evaluation import EvalConfig, RecordStore, StepSpec
from advguard.models import create_model
from advguard.training import TrainConfig


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_input")
    torch.manual_seed(0)
    nan = create_model("lenet5", in_channels=1)
    with torch.no_grad():
        for p in nan.parameters():
            p.fill_(float("nan"))
    write_idx_dataset(root / "data" / "mnist", gz=True)
    write_cifar10(root / "data" / "cifar-10-batches-py")
    return {
        "fmnist": save_checkpoint(root / "f.safetensors", create_model("lenet5", in_channels=1),
                                  metadata={"dataset": "fashion-mnist-sample"}),
        "cifar": save_checkpoint(root / "c.safetensors",
                                 create_model("lenet5", in_channels=3, input_size=32),
                                 metadata={"dataset": "cifar10"}),
        "nan": save_checkpoint(root / "nan.safetensors", nan,
                               metadata={"dataset": "fashion-mnist-sample"}),
        "data": root / "data",
        "root": root,
    }


def _eval(files: dict[str, Path], *extra: str, model: str = "fmnist") -> list[str]:
    return ["eval", "--model", str(files[model]), "--dataset", "fashion-mnist-sample", "--n", "4",
            "--store", str(files["root"] / "records.sqlite"), "--quiet", "--no-checks", *extra]


# (name, argv builder, the text the one-line error must contain)
CLI_ERRORS: list[tuple[str, Callable[[dict[str, Path]], list[str]], str]] = [
    ("CIFAR checkpoint on F-MNIST images", lambda f: _eval(f, model="cifar"),
     "c.safetensors takes 3x32x32 images (trained on cifar10), but fashion-mnist-sample/test "
     "has 1x28x28 images"),
    ("F-MNIST checkpoint on CIFAR images", lambda f: [
        "eval", "--model", str(f["fmnist"]), "--dataset", "cifar10", "--set",
        f"data_root={f['data']}", "--n", "4", "--store", str(f["root"] / "r.sqlite")],
     "f.safetensors takes 1x28x28 images (trained on fashion-mnist-sample), but cifar10/test "
     "has 3x32x32 images"),
    ("unclosed brace in --defense", lambda f: _eval(f, "--defense", "{name: cap"),
     "--defense: not valid YAML: '{name: cap'"),
    ("unhashable key in --defense", lambda f: _eval(f, "--defense", "{[1]: 2}"),
     "found unhashable key"),
    ("malformed --attack value", lambda f: _eval(f, "--attack", "adaptive:pgd:steps={"),
     "--attack steps: not valid YAML: '{'"),
    ("--attack without an attack", lambda f: _eval(f, "--attack", "adaptive"),
     "--attack expects SETTING:ATTACK"),
    ("--attack mapping with 'name' instead of setting/attack",
     lambda f: _eval(f, "--attack", "{name: pgd, steps: 3}"),
     "each step needs 'setting' and 'attack' (missing: setting, attack), e.g. {setting: "
     "adaptive, attack: pgd, steps: 20}; got {'name': 'pgd', 'steps': 3}"),
    ("steps: pgd", lambda f: _eval(f, "--set", "steps=pgd"),
     "evaluation config: 'steps' must be a list"),
    ("steps: [1, 2]", lambda f: _eval(f, "--set", "steps=[1, 2]"),
     "each step is a mapping such as {setting: adaptive, attack: pgd, steps: 20}, got 1"),
    ("defense as a list", lambda f: _eval(f, "--set", "defense=[bit_depth, 2]"),
     "a defense spec is a name or a mapping with a 'name', got list"),
    ("bits: 0", lambda f: _eval(f, "--defense", "{name: bit_depth, bits: 0}"),
     "defense 'bit_depth': "),
    ("sigma: -0.1", lambda f: _eval(f, "--defense", "{name: gaussian_noise, sigma: -0.1}"),
     "defense 'gaussian_noise': "),
    ("mi_ol without its pool", lambda f: _eval(f, "--defense", "{name: mi_ol, lam: 0.5}"),
     "defense 'mi_ol': the spec needs 'pool' (parameters: lam=0.5, samples=30, pool=required"),
    ("n_labels: 0", lambda f: _eval(f, "--defense", "{name: cap, n_labels: 0}"),
     "defense 'cap': n_labels must be >= 1, got 0"),
    ("eps 8 for images in [0, 1]", lambda f: _eval(f, "--eps", "8"),
     "eps=8 exceeds the pixel range (0.0, 1.0) for an L-inf budget"),
    ("eps as a word", lambda f: _eval(f, "--eps", "small"),
     "'eps' must be a number, got 'small'"),
    ("NaN model", lambda f: _eval(f, "--attack", "adaptive:pgd:steps=1", model="nan"),
     "nan.safetensors returns NaN or infinite scores on clean fashion-mnist-sample images"),
    ("eot=0 on a randomized defense", lambda f: _eval(
        f, "--defense", "{name: gaussian_noise, sigma: 0.1}", "--attack",
        "adaptive:pgd:steps=1,eot=0"), "eot and vote must be >= 1 (the number of draws), got "
                                       "eot=0"),
    ("steps=abc", lambda f: _eval(f, "--attack", "adaptive:pgd:steps=abc"),
     "attack 'pgd': 'steps' must be an int, got 'abc'"),
    ("steps=2.5", lambda f: _eval(f, "--attack", "adaptive:pgd:steps=2.5"),
     "attack 'pgd': 'steps' must be an int, got 2.5"),
    ("loss=xent", lambda f: _eval(f, "--attack", "adaptive:pgd:loss=xent"),
     "unknown attack loss 'xent'; did you mean 'ce'?"),
    ("n: ten", lambda f: _eval(f, "--set", "n=ten"),
     "evaluation config: 'n' must be an int or null, got 'ten'"),
    ("unknown eval key", lambda f: _eval(f, "--set", "epsilon=0.1"),
     "'epsilon' (did you mean 'eps'?)"),
    ("unknown attack", lambda f: _eval(f, "--attack", "adaptive:pdg"),
     "unknown attack 'pdg'; did you mean 'pgd'"),
    ("--set epochs=ten", lambda f: [
        "train", "--dataset", "fashion-mnist-sample", "--model", "lenet5", "--set",
        "epochs=ten", "--output", str(f["root"] / "never")],
     "training config: 'epochs' must be an int, got 'ten'"),
    ("lr nan", lambda f: [
        "train", "--dataset", "fashion-mnist-sample", "--model", "lenet5", "--set", "lr=.nan",
        "--output", str(f["root"] / "never")], "lr must be a finite number > 0, got nan"),
    ("unknown training key", lambda f: [
        "train", "--dataset", "fashion-mnist-sample", "--model", "lenet5", "--set", "epoch=3",
        "--output", str(f["root"] / "never")], "'epoch' (did you mean 'epochs'?)"),
]


@pytest.mark.parametrize(("name", "argv", "message"), CLI_ERRORS, ids=[c[0] for c in CLI_ERRORS])
def test_cli_bad_input_is_one_line(name: str, argv: Callable[[dict[str, Path]], list[str]],
                                   message: str, files: dict[str, Path],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    code = main(argv(files))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("advguard: error: ")]
    assert len(lines) == 1 and message in lines[0], err
    assert not (files["root"] / "never").exists()


def test_eps_as_a_fraction_is_accepted(files: dict[str, Path],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_eval(files, "--eps", "8/255", "--attack", "adaptive:pgd:steps=1,alpha=2/255")
                ) == 0
    out = capsys.readouterr().out
    assert "records:" in out
    config = EvalConfig.from_dict({"eps": "8/255", "steps": [
        {"setting": "adaptive", "attack": "pgd", "alpha": "2/255"}]})
    assert config.eps == pytest.approx(8 / 255)
    attack = make_attack("pgd", eps=config.eps, **config.steps[0].params)
    assert attack.alpha == pytest.approx(2 / 255)  # type: ignore[attr-defined]


def _summary_flags(store: Path) -> dict[str, str]:
    with RecordStore(store) as db:
        (eval_id,) = db.evaluation_ids()
        return {f.flag: f.detail for f in db.flags(eval_id) if f.fired}


def test_more_examples_than_the_split_has_is_said_and_recorded(
        files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "s.sqlite"
    argv = ["eval", "--model", str(files["fmnist"]), "--dataset", "fashion-mnist-sample",
            "--n", "100000", "--store", str(store), "--quiet", "--no-checks"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "fewer_examples" in out and "asked for n=100000" in out
    flags = _summary_flags(store)
    assert flags["fewer_examples"] == ("asked for n=100000; fashion-mnist-sample/test has 1000, "
                                       "all evaluated")


def test_a_checkpoint_evaluated_on_another_dataset_of_the_same_shape_is_flagged(
        files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "s.sqlite"
    assert main(["eval", "--model", str(files["fmnist"]), "--dataset", "mnist", "--set",
                 f"data_root={files['data']}", "--n", "4", "--store", str(store), "--quiet",
                 "--no-checks"]) == 0
    assert "dataset_mismatch" in capsys.readouterr().out
    assert _summary_flags(store)["dataset_mismatch"] == ("trained on fashion-mnist-sample, "
                                                         "evaluated on mnist")
    same = tmp_path / "same.sqlite"  # the sample is Fashion-MNIST: no flag
    assert main(["eval", "--model", str(files["fmnist"]), "--dataset", "fashion-mnist-sample",
                 "--n", "4", "--store", str(same), "--quiet", "--no-checks"]) == 0
    assert "dataset_mismatch" not in _summary_flags(same)


def test_a_larger_train_size_than_the_split_is_said_and_recorded(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", "--dataset", "fashion-mnist-sample", "--model", "lenet5", "--epochs",
                 "1", "--set", "train_size=100000", "--set", "test_size=0", "--set",
                 "augment=none", "--output", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    message = ("train_size=100000 but fashion-mnist-sample has 5000 training images: all of "
               "them are used")
    assert f"advguard: warning: {message}" in err
    assert json.loads((out / "record.json").read_text())["warnings"] == [message]


class _Flat(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).sum(1)


class _NaN(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full((x.shape[0], 10), float("nan"))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return create_model("lenet5", in_channels=1).eval()


X = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1])

# (name, call, exception type, the text its message must contain)
API_ERRORS: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    ("float64 images", lambda: build_defense("none", _model())(X.double()),
     InputValidationError, "are torch.float64 but the model's weights are torch.float32"),
    ("3 channels into a 1-channel model", lambda: build_defense("none", _model())(
        torch.rand(2, 3, 28, 28)), InputValidationError,
     "have shape 3x28x28 but the model takes 1x28x28 images"),
    ("32x32 into a 28x28 model", lambda: build_defense("none", _model())(
        torch.rand(2, 1, 32, 32)), InputValidationError,
     "have shape 1x32x32 but the model takes 1x28x28 images"),
    ("3 channels through a pipeline (Guo)", lambda: build_defense("guo", _model())(
        torch.rand(2, 3, 28, 28)), InputValidationError,
     "have shape 3x28x28 but the model takes 1x28x28 images"),
    ("32x32 through an average of Xie", lambda: build_defense(
        {"name": "averaged", "defense": "xie", "n": 2}, _model())(torch.rand(2, 1, 32, 32)),
     InputValidationError, "have shape 1x32x32 but the model takes 1x28x28 images"),
    ("0-255 images", lambda: build_defense("none", _model())(X * 255), InputValidationError,
     "must lie in [0, 1]"),
    ("NaN images", lambda: build_defense("none", _model())(X * float("nan")),
     InputValidationError, "contain NaN or inf"),
    ("PGD(steps=2.5)", lambda: PGD(eps=0.1, steps=2.5), ConfigError,  # type: ignore[arg-type]
     "attack 'pgd': 'steps' must be an int, got 2.5"),
    ("PGD(eps=8)", lambda: PGD(eps=8), ConfigError, "eps=8 exceeds the pixel range"),
    ("a model returning (N,) scores", lambda: PGD(eps=0.1, steps=1)(_Flat(), X, Y),
     InputValidationError, "must return scores of shape (N, classes) = (2, K), got (2,)"),
    ("a model returning NaN", lambda: PGD(eps=0.1, steps=1)(_NaN(), X, Y),
     InputValidationError, "returns NaN or infinite scores on the clean inputs"),
    ("build_defense(42, model)", lambda: build_defense(42, _model()),  # type: ignore[arg-type]
     ConfigError, "a defense spec is a name or a mapping with a 'name', got int: 42"),
    ("TrainConfig(lr=nan)", lambda: TrainConfig(lr=float("nan")), ConfigError,
     "lr must be a finite number > 0, got nan"),
    ("TrainConfig epochs: ten", lambda: TrainConfig.from_dict({"epochs": "ten"}), ConfigError,
     "training config: 'epochs' must be an int, got 'ten'"),
    ("StepSpec eot=0", lambda: StepSpec(setting="adaptive", attack="pgd", eot=0), ConfigError,
     "eot and vote must be >= 1"),
    ("eps '8/0'", lambda: EvalConfig.from_dict({"eps": "8/0"}), ConfigError,
     "division by zero in '8/0'"),
]


@pytest.mark.parametrize(("name", "call", "kind", "message"), API_ERRORS,
                         ids=[c[0] for c in API_ERRORS])
def test_api_bad_input_raises_a_typed_error(name: str, call: Callable[[], Any],
                                            kind: type[Exception], message: str) -> None:
    with pytest.raises(kind) as info:
        call()
    assert isinstance(info.value, AdvguardError)
    assert message in str(info.value)


def test_a_checkpoint_of_another_shape_names_the_mismatch(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from advguard.checkpoint import load_checkpoint

    path = save_checkpoint(tmp_path / "m.safetensors", _model())
    with open(path, "rb") as f:  # keep the metadata, shrink one weight
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    tensors = load_file(str(path))
    name = next(k for k in tensors if k.endswith("weight"))
    tensors[name] = tensors[name][:1].clone()
    save_file(tensors, str(path), metadata=header.get("__metadata__"))
    with pytest.raises(CheckpointError, match=rf"size mismatch for {name.split('.', 1)[-1]}|"
                                              rf"size mismatch for {name}"):
        load_checkpoint(path)


def test_an_attack_on_images_the_model_cannot_take_is_one_clear_error(
        fmnist_model: torch.nn.Module) -> None:
    from advguard.attacks import make_attack
    from advguard.errors import InputValidationError

    attack = make_attack("auto-pgd", eps=0.1, steps=2)
    with pytest.raises(InputValidationError, match=r"cannot take inputs of shape \(2, 3, 28, 28\)"):
        attack(fmnist_model, torch.rand(2, 3, 28, 28), torch.tensor([0, 1]))
