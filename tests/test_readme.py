"""The README's configuration reference is the one generated from the config models."""

from __future__ import annotations

from spendwatch.ops.configdoc import BEGIN, END, render
from tests.conftest import REPO


def test_readme_config_reference_is_current():
    text = (REPO / "README.md").read_text()
    assert BEGIN in text and END in text, "README lacks the generated reference block"
    embedded = text[text.index(BEGIN) : text.index(END) + len(END)]
    assert embedded == render(), "run `spendwatch config-reference` and paste it into README"


def test_every_documented_field_has_a_description():
    reference = render()
    undocumented = [
        line.split("|")[1].strip()
        for line in reference.splitlines()
        if line.startswith("| `") and line.rstrip().endswith("|  |") and "`type`" not in line
    ]
    assert undocumented == []


def test_readme_quick_start_config_is_valid(tmp_path):
    from spendwatch.config import load_config

    text = (REPO / "README.md").read_text()
    block = text[text.index("```yaml\n# my.yaml\n") + len("```yaml\n") :]
    block = block[: block.index("```")]
    path = tmp_path / "my.yaml"
    path.write_text(block)
    config = load_config(path)
    assert [d.type for d in config.detectors] == ["robust_seasonal", "unit_cost"]
    assert config.budgets[0].forecast
