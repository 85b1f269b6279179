"""Language models end to end on the sample decoder (real trained weights, onnxruntime-genai layout):
quantize weight-only, validate on text, benchmark generation, and the search for 8-bit weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from qconvert.cli.app import app
from tests.cli.test_schema import _valid

TINY = Path(__file__).resolve().parents[2] / "sample_models" / "tiny_llm"
runner = CliRunner()


def invoke(*args: object) -> tuple[int, str, str]:
    done = runner.invoke(app, [str(a) for a in args])
    return done.exit_code, done.stdout, done.stderr


@pytest.fixture(scope="module")
def int4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("int4") / "model.onnx"
    code, _, err = invoke("quantize", TINY / "model.onnx", "-o", out, "--mode", "weight-only")
    assert code == 0, err
    return out


def test_inspect_recognises_the_decoder() -> None:
    code, out, _ = invoke("inspect", TINY / "model.onnx", "--json")
    assert code == 0
    doc = json.loads(out)
    _valid(doc)
    assert doc["decoder"]["vocab"] == 512 and doc["decoder"]["num_layers"] == 3
    assert (doc["decoder"]["kv_heads"], doc["decoder"]["head_size"]) == (2, 32)
    roles = doc["bytes_by_role"]
    assert roles["embedding"] == roles["lm_head"] == 512 * 128 * 4  # the tie is by value: two stored copies
    assert doc["candidates"]["weight-only"] == {"Gather": 1, "MatMul": 22}


def test_validate_on_text_measures_and_gates(int4: Path) -> None:
    code, out, _ = invoke("validate", TINY / "model.onnx", int4, "--text", TINY / "eval.txt", "--json")
    assert code == 0
    _valid(json.loads(out))
    lm = json.loads(out)["language"]
    assert lm["tokens"] > 5000 and lm["windows"] == 25  # 24 whole windows of 256 and the rest
    assert abs(lm["reference_perplexity"] - 13.805) < 0.01  # the build's own figure (sample_models/README.md)
    assert 1.0 < lm["perplexity_ratio"] < 1.05 and 0.8 < lm["top1_agreement"] < 1.0
    assert lm["prompts"] == 4 and 0.0 <= lm["generation_agreement"] <= 1.0
    code, _, err = invoke("validate", TINY / "model.onnx", int4, "--text", TINY / "eval.txt", "--max-ppl-ratio",
                          "1.0001", "--min-top1", "0.5", "--prompts", "0")
    assert code == 3 and "max_ppl_ratio" in err


def test_validate_refuses_text_it_cannot_use(int4: Path, tmp_path: Path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("def f(): pass\n")
    code, _, err = invoke("validate", TINY / "model.onnx", int4, "--text", short)
    assert code == 2 and "shorter than one window" in err
    ids = tmp_path / "ids.npy"
    np.save(ids, np.array([1, 2, 600] * 200))
    code, _, err = invoke("validate", TINY / "model.onnx", int4, "--tokens", ids)
    assert code == 2 and "600, outside the model's vocabulary [0, 512)" in err
    code, _, err = invoke("validate", TINY / "model.onnx", int4)
    assert code == 2 and "--text FILE" in err
    code, _, err = invoke("validate", TINY / "model.onnx", int4, "--text", TINY / "eval.txt", "--min-cosine", "0.9")
    assert code == 2 and "on text, use --max-ppl-ratio" in err


def test_benchmark_lm_times_prefill_and_decode(int4: Path) -> None:
    code, out, err = invoke("benchmark", TINY / "model.onnx", int4, "--lm", "--prompt-tokens", "32", "--new-tokens",
                            "8", "--runs", "2", "--json")
    assert code == 0, err
    doc = json.loads(out)
    _valid(doc)
    assert [d["kv_cache"] for d in doc["decoding"]] == [True, True] and doc["models"] == []
    first, second = doc["decoding"]
    assert first["decode_speedup"] == 1.0 and second["decode_tokens_per_s"] > 0 and second["prefill_ms"] > 0
    assert len(second["decode_samples_tokens_per_s"]) == 2


def test_the_search_keeps_the_fewest_sensitive_weights_in_8_bits(tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    code, stdout, err = invoke("quantize", TINY / "model.onnx", "-o", out, "--mode", "weight-only", "--text",
                               TINY / "eval.txt", "--max-ppl-ratio", "1.006", "--json")
    assert code == 0, err
    doc = json.loads(stdout)
    _valid(doc)
    search = doc["weight_search"]
    assert search["met"] and search["trials"][0]["eight_bit"] == 0 and not search["trials"][0]["passed"]
    chosen = min(t["eight_bit"] for t in search["trials"] if t["passed"])
    assert chosen > 0 and all(t["passed"] for t in search["trials"] if t["eight_bit"] > chosen)
    assert sum(r["eight_bit"] for r in search["ranking"]) == chosen
    assert len(search["ranking"]) == 22  # 21 MatMuls and the tied embedding + lm_head as one
    eight = {w["node"] for w in doc["quantize"]["weights"] if w["bits"] == 8}
    assert eight == {n for r in search["ranking"] if r["eight_bit"] for n in r["nodes"]}
    assert doc["validate"][0]["language"]["perplexity_ratio"] <= 1.006 and doc["passed"]
    assert json.loads((tmp_path / "genai_config.json").read_text())["model"]["decoder"]["filename"] == "model.onnx"


def test_with_calibration_text_gptq_mixes_8_bit_weights_into_a_budget(tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    code, stdout, err = invoke("quantize", TINY / "model.onnx", "-o", out, "--mode", "weight-only", "--calib-text",
                               TINY / "calib.txt", "--json")
    assert code == 0, err
    doc = json.loads(stdout)
    _valid(doc)
    config = doc["config"]["weight_only"]
    assert (config["method"], config["scales"], config["bits_per_weight"]) == ("gptq", "fp16", 6.25)
    quantized = [w for w in doc["weights"] if w["bits"]]
    raised = [w for w in quantized if w["bits"] == 8]
    assert 0 < len(raised) < len(quantized)
    assert sum(w["stored_bytes"] for w in quantized) * 8 <= 6.25 * sum(w["params"] for w in quantized
                                                                         if w["stored_bytes"])
    code, stdout, err = invoke("quantize", TINY / "model.onnx", "-o", tmp_path / "pure.onnx", "--mode", "weight-only",
                               "--calib-text", TINY / "calib.txt", "--bits-per-weight", "4", "--json")
    assert code == 0 and {w["bits"] for w in json.loads(stdout)["weights"]} == {4}, err
    code, _, err = invoke("quantize", TINY / "model.onnx", "-o", tmp_path / "rtn.onnx", "--mode", "weight-only",
                          "--bits-per-weight", "6")
    assert code == 2 and "by GPTQ's output error" in err and not (tmp_path / "rtn.onnx").exists()


def test_a_search_out_of_trials_writes_the_closest_and_exits_3(tmp_path: Path) -> None:
    """On a model with its weights in a sidecar, as language models come: each trial's size counts it."""
    source = tmp_path / "src" / "model.onnx"
    source.parent.mkdir()
    onnx.save(onnx.load(str(TINY / "model.onnx")), str(source), save_as_external_data=True,
              location="model.onnx.data", size_threshold=0)
    shutil.copy(TINY / "tokenizer.json", source.parent)
    out = tmp_path / "model.onnx"
    code, stdout, err = invoke("quantize", source, "-o", out, "--mode", "weight-only", "--text", TINY / "eval.txt",
                               "--max-ppl-ratio", "1.0001", "--max-trials", "2", "--json")
    assert code == 3 and out.is_file(), err
    doc = json.loads(stdout)
    assert not doc["passed"] and doc["gates"][0]["name"] == "max_ppl_ratio"
    written = doc["quantize"]["size"]["after_bytes"]  # the same model; its tensors name a shorter sidecar
    assert doc["weight_search"]["trials"][-1]["file_bytes"] == pytest.approx(written, rel=0.002) and written > 100_000


def test_the_html_report_shows_the_language_model_steps(tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    code, _, err = invoke("quantize", TINY / "model.onnx", "-o", tmp_path / "model.onnx", "--mode", "weight-only",
                          "--text", TINY / "eval.txt", "--max-ppl-ratio", "1.05", "--prompts", "1", "--benchmark",
                          "--runs", "1", "--report", report)
    assert code == 0, err
    page = report.read_text()
    for section in ("Weights by role", "Weight search", "Language model on", "Generation on", "decode tokens/s"):
        assert section in page, section
