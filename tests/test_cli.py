"""The command line: a small real run, and one clear line with exit code 2 for each bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image

from augsense.cli import main


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "images"
    for label in ("1", "7"):
        (root / label).mkdir(parents=True)
        for i in range(2):
            array = (torch.rand(40, 48, 3) * 255).to(torch.uint8).numpy()
            Image.fromarray(array).save(root / label / f"img{i}.png")
    (root / "1" / "notes.txt").write_text("not an image")
    (root / "7" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return root


def run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


SMALL = ["--model", "resnet18", "--weights", "random", "--layers", "layer1,fc", "--factors", "hue,hflip", "--n", "4", "--batch-size", "16",
         "--device", "cpu", "--quiet", "--no-report", "--output", "logits"]


def test_run_writes_results_and_reports_skipped_files(folder, tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, stderr = run(["run", "--images", folder, "--out", out, *SMALL], capsys)
    assert code == 0, stderr
    assert {"indices.parquet", "layers.parquet", "maps.npz", "run.json", "config.toml"} <= {p.name for p in out.iterdir()}
    info = json.loads((out / "run.json").read_text())
    assert info["images"]["count"] == 4
    assert len(info["images"]["skipped"]) == 2
    assert "dominant factors per layer" in stdout
    # the written config reproduces the run
    code, _, stderr = run(["run", out / "config.toml", "--out", tmp_path / "again", "--quiet"], capsys)
    assert code == 0, stderr


@pytest.mark.parametrize("extra, message", [
    (["--layers", "layer9"], "unknown layer 'layer9'"),
    (["--factors", "hue,warp"], "warp"),
    (["--n", "6"], "power of two"),
    (["--n", "six"], "--n expects an integer"),
    (["--estimator", "magic"], "estimator = 'magic'"),
    (["--bounds", "hue.shift=-2,2"], "hue"),
    (["--bounds", "rotation.angle=-5,5"], "rotation"),
])
def test_bad_options_give_one_clear_line(extra, message, folder, tmp_path, capsys):
    code, _, stderr = run(["run", "--images", folder, "--out", tmp_path / "x", *SMALL, *extra], capsys)
    assert code == 2
    assert stderr.startswith("augsense: error:") and message in stderr, stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("command", ["run", "demo"])
def test_a_bad_config_leaves_no_out_folder_behind(command, tmp_path, capsys):
    code, _, stderr = run([command, "--out", tmp_path / "new" / "run", "--n", "6", "--quiet"], capsys)
    assert code == 2 and "power of two" in stderr
    assert not (tmp_path / "new").exists()


def test_wrong_layer_suggests_close_matches(folder, tmp_path, capsys):
    code, _, stderr = run(["run", "--images", folder, "--out", tmp_path / "x", *SMALL, "--layers", "layer9"], capsys)
    assert code == 2 and "did you mean layer4, layer3, layer2, layer1" in stderr and "augsense layers MODEL" in stderr
    assert "avgpool" not in stderr  # close matches only, not every layer of the model


def test_bad_images_and_configs(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("x")
    for images, message in ((tmp_path / "missing", "does not exist"), (empty, "no readable images")):
        code, _, stderr = run(["run", "--images", images, "--out", tmp_path / "x", *SMALL], capsys)
        assert code == 2 and message in stderr, stderr
    config = tmp_path / "bad.toml"
    config.write_text('model = "resnet18"\nlayerz = ["fc"]\n')
    code, _, stderr = run(["run", config, "--out", tmp_path / "x"], capsys)
    assert code == 2 and "unknown config key 'layerz'" in stderr
    config.write_text('n = "many"\n')
    code, _, stderr = run(["run", config, "--out", tmp_path / "x"], capsys)
    assert code == 2 and "'n' must be an integer" in stderr
    config.write_text('n = [\n')
    code, _, stderr = run(["run", config, "--out", tmp_path / "x"], capsys)
    assert code == 2 and "not valid TOML" in stderr


def test_weights_files_are_checked(folder, tmp_path, capsys):
    good = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), good)
    wrong = tmp_path / "alexnet.pth"
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), wrong)
    base = ["run", "--images", folder, "--out", tmp_path / "w", *SMALL]
    assert run([*base, "--weights", good], capsys)[0] == 0
    code, _, stderr = run([*base, "--weights", wrong, "--overwrite"], capsys)  # same --out: replace the first run
    assert code == 2 and "does not match model 'resnet18'" in stderr
    code, _, stderr = run([*base, "--weights", tmp_path / "nope.pth", "--overwrite"], capsys)
    assert code == 2 and "does not exist" in stderr


def test_layers_and_factors_listings(capsys):
    code, stdout, _ = run(["layers", "resnet18", "--depth", "1"], capsys)
    assert code == 0 and "layer1" in stdout and "64×56×56" in stdout
    code, stdout, _ = run(["factors"], capsys)
    assert code == 0 and "elliptic_local_blur" in stdout and "paper-set1" in stdout


def test_cli_only_parses_and_dispatches():
    """Every sub-command lives in augsense/commands/, and no command module imports cli.py back."""
    import ast
    import pkgutil

    import augsense.commands
    from augsense.cli import FIRST_COMMANDS, build_parser

    folder = Path(augsense.commands.__path__[0])
    modules = [m.name for m in pkgutil.iter_modules([str(folder)])]
    assert set(FIRST_COMMANDS) <= set(modules)
    for name in modules:
        tree = ast.parse((folder / f"{name}.py").read_text(encoding="utf-8"))
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        assert "augsense.cli" not in imported, f"commands/{name}.py imports augsense.cli (an import cycle)"
    cli = ast.parse(Path(build_parser.__code__.co_filename).read_text(encoding="utf-8"))
    handlers = [node.name for node in cli.body if isinstance(node, ast.FunctionDef) and node.name.startswith("cmd_")]
    assert handlers == [], f"sub-command handlers left in cli.py: {handlers}"


def test_a_constant_layer_says_why_it_has_no_indices(folder, tmp_path, capsys):
    model = torchvision.models.resnet18(weights=None)
    torch.nn.init.zeros_(model.fc.weight)
    torch.nn.init.zeros_(model.fc.bias)  # an untrained head initialised to zero, as torchvision's ViT head is
    weights = tmp_path / "zero_head.pth"
    torch.save(model.state_dict(), weights)
    code, stdout, stderr = run(["run", "--images", folder, "--out", tmp_path / "run", *SMALL, "--weights", weights],
                               capsys)
    assert code == 0, stderr
    fc = next(line for line in stdout.splitlines() if line.strip().startswith("fc "))
    assert "no variance" in fc and "nan" not in fc
    layer1 = next(line for line in stdout.splitlines() if line.strip().startswith("layer1 "))
    assert "nan" not in layer1 and "no variance" not in layer1


def _entry(code: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``augsense.cli.entry`` (the console script) in a fresh interpreter, after ``code``."""
    script = f"import sys\n{code}\nsys.argv = ['augsense', *{list(args)!r}]\nfrom augsense.cli import entry\nentry()\n"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)


def test_the_console_script_exits_fast_with_the_command_status_output_and_exit_handlers():
    """entry() leaves with os._exit after the command: the exit status, every line of output (flushed) and the
    atexit handlers (logging, temporary files) must survive that."""
    done = _entry("import atexit; atexit.register(lambda: print('exit handler ran'))", "factors")
    assert done.returncode == 0, done.stderr
    listing = done.stdout.splitlines()
    assert listing[-1] == "exit handler ran"
    assert any(line.split()[:1] == ["hue"] for line in listing) and len(listing) > 20
    bad = _entry("", "run", "--model", "no-such-model", "--out", "/nonexistent/x")
    assert bad.returncode == 2 and bad.stderr.startswith("augsense: error:") and bad.stdout == ""
    module = subprocess.run([sys.executable, "-m", "augsense", "layers", "no-such-model"], capture_output=True,
                            text=True, timeout=300)
    assert module.returncode == 2 and "augsense: error:" in module.stderr


def test_the_run_path_imports_pandas_only_when_it_makes_a_table():
    """pandas (84 MB resident) loaded before the loop adds to the loop's peak RSS (issue #17): the modules a run
    starts with must not import it; the first table does (through the lazy stand-in)."""
    code = ("import sys; import augsense.commands.run, augsense.analyses.sensitivity, augsense.io.results as r; "
            "assert 'pandas' not in sys.modules, 'imported at start'; r.pd.DataFrame; "
            "assert 'pandas' in sys.modules; print(r.versions()['pandas'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    import pandas

    assert done.stdout.strip() == pandas.__version__
