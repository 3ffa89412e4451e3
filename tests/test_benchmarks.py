"""The committed benchmark scripts run and report what they claim (tiny settings)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_train_speed_reports_every_path_against_the_fp32_reference(
    tmp_path: Path, precision: str
) -> None:
    train_speed = load_script("train_speed")
    out = tmp_path / "speed.md"
    train_speed.main(["--preset", "quick", "--batch", "2", "--iterations", "1", "--warmup", "0",
                      "--threads", "1", "--precision", precision, "--out", str(out)])
    text = out.read_text()
    rows = [line for line in text.splitlines()
            if line.startswith(("| fast path", "| reference loop", "| plain reference loop"))]
    assert len(rows) == 4
    assert f"| {precision} |" in rows[0] and "| fp32 |" in rows[2] and "| fp32 |" in rows[3]
    # the plain reference is the baseline: 1.00× against itself
    assert rows[3].split("|")[-4].strip() == "1.00×"
    assert "(default: experts grouped)" in rows[0] if precision == "bf16" else \
        "(default: experts looped)" in rows[0]
    assert "fp32 **" in text and (("bf16 **" in text) == (precision == "bf16"))
    assert "| decomposition |" in text and "| generation |" in text
