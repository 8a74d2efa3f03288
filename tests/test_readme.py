"""The README's two set-up commands are the ones CI runs and the ones that work."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block, "README must open with a ```bash block holding the two set-up commands"
    lines = [ln.strip() for ln in block.group(1).splitlines() if ln.strip() and not ln.startswith("#")]
    return lines


def test_readme_top_has_exactly_two_commands() -> None:
    cmds = readme_commands()
    assert len(cmds) == 2, cmds
    assert "onnxprune prune" in cmds[0] and "models/" in cmds[0]
    assert "pytest" in cmds[1]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert readme_commands()[1] in ci


def test_readme_main_command_names_a_shipped_model() -> None:
    cmd = readme_commands()[0]
    models = re.findall(r"models/[\w./-]+", cmd)
    assert models
    for m in models:
        assert (ROOT / m).is_file(), m


def test_readme_python_example_runs(tmp_path, monkeypatch) -> None:
    import shutil

    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S)
    assert code
    shutil.copy(ROOT / "models" / "digits_cnn.onnx", tmp_path / "model.onnx")
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(code.group(1), "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    assert (tmp_path / "model-pruned.onnx").is_file()
    assert namespace["result"].report["macs_after"] < namespace["result"].report["macs_before"]  # type: ignore[attr-defined]


def test_readme_main_command_runs_and_keeps_accuracy(tmp_path, monkeypatch, capsys) -> None:
    import shlex

    from onnxprune.cli.main import main

    words = shlex.split(readme_commands()[0].split(".venv/bin/onnxprune", 1)[1])
    out = words.index("-o")
    words[out + 1] = str(tmp_path / words[out + 1])
    monkeypatch.chdir(ROOT)
    assert main(words) == 0
    text = capsys.readouterr().out
    assert "top-1 accuracy        99.44% -> 99.44%" in text  # the figure the README quotes
    assert "exactness             cpu: pass" in text


def test_readme_architecture_names_every_module() -> None:
    """The architecture section is the map a newcomer reads first: a module missing from it is a wrong map.

    Subcommand modules are covered by the pattern the section states (``cmd_<name>.py``).
    """
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Architecture"):text.index("## Guarantees")]
    package = ROOT / "onnxprune"
    missing = [
        str(path.relative_to(package))
        for path in sorted(package.rglob("*.py"))
        if path.name not in ("__init__.py", "__main__.py")
        and not (path.parent.name == "cli" and path.name.startswith("cmd_"))
        and f"`{path.name}`" not in section
    ]
    assert not missing, f"README's Architecture section does not name: {missing}"
