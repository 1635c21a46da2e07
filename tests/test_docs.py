"""Documentation that is checked: the generated configuration page, every `cicld` command the docs
and examples show, and the examples themselves."""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO

EXAMPLES = REPO / "examples"
#: Subcommands the docs may show before they exist (being built); checked as soon as they do.
UPCOMING = {"demo"}
_OPERATORS = {"&&", "||", ";", "|", "&", "(", ")", "$(", "`"}


# ---------------------------------------------------------------- docs/configuration.md
def test_configuration_page_is_generated_from_the_code():
    from cicld.training.reference import REGENERATE, configuration_reference

    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == configuration_reference(), f"docs/configuration.md is out of date; regenerate it: {REGENERATE}"


def test_configuration_page_lists_every_field_of_every_stage():
    from cicld.training.config import STAGE_CONFIGS
    from cicld.training.reference import STAGE_NOTES, configuration_reference

    page = configuration_reference()
    missing = [
        f"{stage}: {field.name}"
        for stage, config_class in STAGE_CONFIGS.items()
        for field in dataclasses.fields(config_class)
        if f"| `--{field.name.replace('_', '-')}`" not in page
    ]
    assert not missing, f"fields missing from docs/configuration.md: {', '.join(missing)}"
    every_field = {f.name for c in STAGE_CONFIGS.values() for f in dataclasses.fields(c)}
    assert set(STAGE_NOTES) <= every_field, "STAGE_NOTES names a field that no longer exists"


# ---------------------------------------------------------------- commands shown in the docs
@dataclass(frozen=True)
class ShownCommand:
    where: str  # file:line
    words: tuple[str, ...]  # the subcommand and what follows it


def code_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of fenced and indented code blocks, continuation lines joined."""
    lines, found, fence, previous_blank = text.splitlines(), [], None, True
    for number, line in enumerate(lines, 1):
        stripped = line.lstrip()
        marker = re.match(r"(`{3,}|~{3,})", stripped)
        if fence is None and marker:
            fence = marker.group(1)
        elif fence is not None and stripped.startswith(fence):
            fence = None
        elif fence is not None or (
            line.startswith(("    ", "\t")) and (previous_blank or found and found[-1][0] == number - 1)
        ):
            found.append((number, line))
        previous_blank = not line.strip()
    return join_continuations(found)


def join_continuations(numbered: list[tuple[int, str]]) -> list[tuple[int, str]]:
    joined: list[tuple[int, str]] = []
    for number, line in numbered:
        if joined and joined[-1][1].rstrip().endswith("\\"):
            joined[-1] = (joined[-1][0], joined[-1][1].rstrip()[:-1] + " " + line.strip())
        else:
            joined.append((number, line))
    return joined


def cicld_commands(line: str) -> list[tuple[str, ...]]:
    """The words after each `cicld` (or `-m cicld` / `-m cicld.cli`) in a shell line."""
    lexer = shlex.shlex(line.strip().removeprefix("$ "), posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        words = list(lexer)
    except ValueError:  # unbalanced quotes: fall back to whitespace
        words = line.split("#")[0].split()
    commands, segment = [], []
    for word in [*words, ";"]:
        if word not in _OPERATORS and not set(word) <= set("&|;<>()"):
            segment.append(word)
            continue
        for i, token in enumerate(segment):
            at_start = all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", w) for w in segment[:i])
            if (
                (token == "cicld" or token.endswith("/cicld"))
                and at_start
                or (token in ("cicld", "cicld.cli") and i > 0 and segment[i - 1] == "-m")
            ):
                commands.append(tuple(segment[i + 1 :]))
                break
        segment = []
    return commands


def shown_commands(path: Path) -> list[ShownCommand]:
    text = path.read_text()
    if path.suffix == ".sh":
        numbered = join_continuations(list(enumerate(text.splitlines(), 1)))
    else:
        numbered = code_lines(text)
    name = path.relative_to(REPO)
    return [ShownCommand(f"{name}:{n}", words) for n, line in numbered for words in cicld_commands(line) if words]


def command_problems(commands: list[ShownCommand]) -> list[str]:
    """What is wrong with each shown command: an unknown subcommand or an option it does not have."""
    import typer

    from cicld.cli import app

    root = typer.main.get_command(app)
    help_names = {"--help", "-h"}

    def options(command) -> set[str]:
        return {
            name
            for p in command.params
            for name in (*p.opts, *getattr(p, "secondary_opts", []))
            if name.startswith("-")
        }

    problems = []
    for shown in commands:
        name, *rest = shown.words
        if name.startswith("-"):
            command, rest = root, list(shown.words)
        elif name in root.commands:
            command = root.commands[name]
        elif name in UPCOMING:
            continue
        else:
            problems.append(f"{shown.where}: `cicld {name}` is not a cicld command")
            continue
        known = options(command) | help_names
        for word in rest:
            if word == "--":
                break
            flag = word.strip("[]").split("=")[0]
            if re.fullmatch(r"--[a-z][a-z0-9-]*|-[a-zA-Z]", flag) and flag not in known:
                problems.append(f"{shown.where}: `cicld {name}` has no option {flag}")
    return problems


def documented_files() -> list[Path]:
    return [
        REPO / "README.md",
        *sorted((REPO / "docs").glob("*.md")),
        *sorted(EXAMPLES.glob("*.md")),
        *sorted(EXAMPLES.glob("*.sh")),
    ]


def test_every_command_in_the_docs_and_examples_is_real():
    commands = [c for path in documented_files() if path.is_file() for c in shown_commands(path)]
    assert len(commands) > 40, "the command scanner found almost nothing; is it still parsing the docs?"
    problems = command_problems(commands)
    assert not problems, "\n".join(problems)


def test_the_command_check_catches_wrong_subcommands_and_flags(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "```bash\n"
        "cicld adapt --source gta5 --mixed-precision bf16   # --not-checked in a comment\n"
        "cicld prepare-data cityscapes -j 8 && cicld adapt --sauce gta5\n"
        "accelerate launch --num_processes 4 -m cicld.cli pretrain-ae --batch-size 1 \\\n"
        "    --grad-acum-steps 2\n"
        "cicld trian --source toy\n"
        "cicld demo --anything\n"
        "echo cicld adapt --ignored\n"
        "```\n"
        "Prose: cicld adapt --not-code\n\n"
        "    cicld evaluate --sliding --windw 512x512\n"
    )
    import typer

    from cicld.cli import app

    commands = [
        ShownCommand(f"page.md:{n}", words)
        for n, line in code_lines(page.read_text())
        for words in cicld_commands(line)
    ]
    demo_exists = "demo" in typer.main.get_command(app).commands  # skipped until it exists, then checked like any other
    assert command_problems(commands) == [
        "page.md:3: `cicld adapt` has no option --sauce",
        "page.md:4: `cicld pretrain-ae` has no option --grad-acum-steps",
        "page.md:6: `cicld trian` is not a cicld command",
        *(["page.md:7: `cicld demo` has no option --anything"] if demo_exists else []),
        "page.md:12: `cicld evaluate` has no option --windw",
    ]


# ---------------------------------------------------------------- examples
def test_python_api_example_segments_an_image_with_a_saved_model(tmp_path, single_thread):
    import torch

    from cicld.data.labels import colorize
    from cicld.data.pngio import read_image, write_image
    from cicld.data.transforms import normalize
    from cicld.models import CICLD, CICLDConfig

    torch.manual_seed(0)
    model = CICLD(CICLDConfig.preset("tiny", input_size=None)).eval()  # run at the image's own size, as a toy model
    model.save_pretrained(tmp_path / "model")
    image = np.random.default_rng(0).integers(0, 256, (32, 64, 3), dtype=np.uint8)
    write_image(tmp_path / "street.png", image)
    out = tmp_path / "out" / "street_color.png"

    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }  # same device as `expected`
    process = subprocess.run(
        [sys.executable, str(EXAMPLES / "python_api.py"), tmp_path / "model", tmp_path / "street.png", out],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert process.returncode == 0, process.stderr
    assert str(out) in process.stdout
    expected = colorize(model.predict(normalize(image)[None]).argmax(1)[0].numpy())  # seeded noise: deterministic
    np.testing.assert_array_equal(read_image(out), expected)


@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("*.sh")))
def test_shell_examples_are_valid_bash(script):
    process = subprocess.run(["bash", "-n", EXAMPLES / script], capture_output=True, text=True)
    assert process.returncode == 0, process.stderr


def test_examples_readme_names_every_example():
    readme = (EXAMPLES / "README.md").read_text()
    unnamed = [p.name for p in EXAMPLES.iterdir() if p.suffix in (".py", ".sh") and p.name not in readme]
    assert not unnamed, f"examples/README.md does not mention {', '.join(unnamed)}"


# ---------------------------------------------------------------- docs/own-data.md, run as written
@pytest.mark.slow
def test_the_own_data_walkthrough_runs_as_written_from_a_folder_of_photos_to_predictions(
    tmp_path, monkeypatch, single_thread
):
    import json

    from _fixtures_own import FIVE_CLASSES, write_class_list, write_pairs, write_photos

    from cicld.cli import main
    from cicld.data.pngio import read_image

    page = REPO / "docs" / "own-data.md"
    class_list = json.loads(re.search(r"```json\n(.*?)```", page.read_text(), re.S).group(1))
    assert class_list == FIVE_CLASSES  # the page's class list is the one the data below is labelled with
    monkeypatch.chdir(tmp_path)
    write_class_list(Path("classes.json"), class_list)
    write_pairs(Path("data/mine"), [(96, 48), (128, 64), (80, 60), (100, 50), (64, 64)])
    write_pairs(Path("data/mine-val"), [(96, 48), (120, 60)], seed=50)
    photos = write_photos(Path("photos"))

    commands = shown_commands(page)
    stages = ["prepare-data", "prepare-data", "pretrain-ae", "pretrain-ldm", "adapt", "evaluate", "predict"]
    assert [c.words[0] for c in commands] == stages
    for command in commands:
        with pytest.raises(SystemExit) as exit_info:
            main(list(command.words))
        assert exit_info.value.code == 0, f"{command.where}: cicld {' '.join(command.words)}"
    classes = json.loads((Path("runs/latest") / "config.json").read_text())["classes"]
    assert classes["classes"] == FIVE_CLASSES["classes"]
    colours = {tuple(c["color"]) for c in classes["classes"]}
    for photo in photos:
        color = read_image(Path("predictions") / f"{photo.relative_to('photos').with_suffix('').as_posix()}_color.png")
        assert {tuple(c) for c in color.reshape(-1, 3)} <= colours
