"""Weight-only quantization: MatMul → MatMulNBits, embeddings → GatherBlockQuantized, tied weights stored once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from qconvert import quantize, validate
from qconvert.cli.app import app
from qconvert.config import (
    LanguageConfig,
    Mode,
    QuantizeConfig,
    ScaleType,
    TextData,
    ValidateConfig,
    WeightForm,
    WeightMethod,
    WeightOnlyConfig,
)
from qconvert.errors import ModelError, NothingQuantizedError, UsageError
from qconvert.quantization.weight_only import (
    half_scales,
    mixed_eight_bit,
    plan_weights,
    slow_path,
    stored_bytes,
    weight_nodes,
)
from tests import models

VOCAB, HIDDEN, FFN = 64, 64, 128


def lm(seed: int = 0, *, tied: bool = True, transposed: bool = True) -> onnx.ModelProto:
    """Gather(embedding) → MatMul up → Relu → MatMul down → lm_head MatMul → logits, the lm_head tied
    to the embedding either through Transpose(table) (`transposed`) or as a stored copy of its transpose."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32)
    head = table.T.copy() if tied else rng.standard_normal((HIDDEN, VOCAB)).astype(np.float32)
    inits = [numpy_helper.from_array(table, "embed.weight"),
             numpy_helper.from_array(rng.standard_normal((HIDDEN, FFN)).astype(np.float32) * 0.1, "up.weight"),
             numpy_helper.from_array(rng.standard_normal((FFN, HIDDEN)).astype(np.float32) * 0.1, "down.weight")]
    nodes = [helper.make_node("Gather", ["embed.weight", "input_ids"], ["x"], name="embed"),
             helper.make_node("MatMul", ["x", "up.weight"], ["h"], name="up"),
             helper.make_node("Relu", ["h"], ["hr"], name="act"),
             helper.make_node("MatMul", ["hr", "down.weight"], ["y"], name="down")]
    if tied and transposed:
        nodes.append(helper.make_node("Transpose", ["embed.weight"], ["head.weight"], name="tie", perm=[1, 0]))
    else:
        inits.append(numpy_helper.from_array(head, "head.weight"))
    nodes.append(helper.make_node("MatMul", ["y", "head.weight"], ["logits"], name="lm_head"))
    return models._model(nodes, [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])],
                         [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", VOCAB])], inits)


def weight_only(**options: object) -> QuantizeConfig:
    return QuantizeConfig(mode=Mode.WEIGHT_ONLY, weight_only=WeightOnlyConfig(**options))  # type: ignore[arg-type]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture
def ids() -> dict[str, np.ndarray]:
    return {"input_ids": np.random.default_rng(1).integers(0, VOCAB, (2, 9))}


def ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


@pytest.mark.parametrize("transposed", [True, False])
def test_int4_tied_embedding_reads_the_lm_head_blocks(tmp_path: Path, ids: dict[str, np.ndarray],
                                                      transposed: bool) -> None:
    src = models.save(lm(transposed=transposed), tmp_path / "lm.onnx")
    result = quantize(src, tmp_path / "q.onnx", config=weight_only())
    model = onnx.load(str(tmp_path / "q.onnx"))
    by_type = {n.op_type: n for n in model.graph.node}
    assert sorted(ops(tmp_path / "q.onnx")) == ["GatherBlockQuantized", "MatMulNBits", "MatMulNBits",
                                                 "MatMulNBits", "Relu", "Reshape"]
    head = next(n for n in model.graph.node if n.name == "lm_head_Q4")
    assert by_type["Reshape"].input[0] == head.input[1]  # the Gather's blocks are the lm_head's
    assert by_type["GatherBlockQuantized"].input[2] == head.input[2]
    assert "embed.weight" not in {t.name for t in model.graph.initializer}  # no float copy left
    embed = next(w for w in result.weights if w.node == "embed")
    assert (embed.bits, embed.stored_bytes, embed.tied_to) == (4, 0, "lm_head")
    assert {w.node: w.role for w in result.weights}["lm_head"] == "lm_head"
    ref, = models.run(src, ids)
    got, = models.run(tmp_path / "q.onnx", ids)
    assert cosine(ref, got) > 0.97
    assert result.size_ratio > 4.5


def test_eight_bits_are_closer_and_larger(tmp_path: Path, ids: dict[str, np.ndarray]) -> None:
    src = models.save(lm(), tmp_path / "lm.onnx")
    four = quantize(src, tmp_path / "q4.onnx", config=weight_only())
    eight = quantize(src, tmp_path / "q8.onnx", config=weight_only(bits=8))
    ref, = models.run(src, ids)
    err4 = np.abs(models.run(tmp_path / "q4.onnx", ids)[0] - ref).mean()
    err8 = np.abs(models.run(tmp_path / "q8.onnx", ids)[0] - ref).mean()
    assert err8 < err4 / 8
    assert four.bytes_after < eight.bytes_after < four.bytes_before / 3
    assert {w.bits for w in eight.weights} == {8}


def test_eight_bit_glob_takes_the_tied_embedding_along(tmp_path: Path) -> None:
    src = models.save(lm(), tmp_path / "lm.onnx")
    result = quantize(src, tmp_path / "q.onnx", config=weight_only(eight_bit=("lm_*",)))
    bits = {w.node: w.bits for w in result.weights}
    assert bits == {"embed": 8, "up": 4, "down": 4, "lm_head": 8}
    assert next(w for w in result.weights if w.node == "embed").stored_bytes == 0
    with pytest.raises(UsageError, match="names no weight node"):
        quantize(src, tmp_path / "q2.onnx", config=weight_only(eight_bit=("nothing*",)))
    assert not (tmp_path / "q2.onnx").exists()


@pytest.mark.parametrize(("symmetric", "scales"), [(True, ScaleType.FP32), (False, ScaleType.FP32),
                                                   (True, ScaleType.FP16)])
def test_eight_bit_weights_of_a_four_bit_model_take_larger_blocks(tmp_path: Path, symmetric: bool,
                                                                  scales: ScaleType) -> None:
    """The search's 8-bit weights: the largest of 128 and 64 dividing K (a tied pair's one K), as an int8
    model's default; what each weight stores is what the search counts it to cost."""
    src = models.save(lm(transposed=False), tmp_path / "lm.onnx")
    config = weight_only(eight_bit=("lm_*", "down"), symmetric=symmetric, scales=scales)
    result = quantize(src, tmp_path / "q.onnx", config=config)
    blocks = {n.name: next(a.i for a in n.attribute if a.name == "block_size")
              for n in onnx.load(str(tmp_path / "q.onnx")).graph.node if n.domain == "com.microsoft"}
    assert blocks == {"up_Q4": 32, "down_Q8": FFN, "lm_head_Q8": HIDDEN, "embed_Q8": HIDDEN}
    stored = {w.node: w.stored_bytes for w in result.weights}
    assert stored["embed"] == 0  # it reads the lm_head's blocks
    bits = {w.node: w.bits for w in result.weights}
    for node in weight_nodes(onnx.load(str(src))):
        if node.name != "embed":
            assert stored[node.name] == stored_bytes(node, bits[node.name], config.weight_only), node.name


def test_fp16_scales_take_two_bytes_less_per_block_and_keep_the_outputs(tmp_path: Path,
                                                                         ids: dict[str, np.ndarray]) -> None:
    src = models.save(lm(), tmp_path / "lm.onnx")
    wide = quantize(src, tmp_path / "q32.onnx", config=weight_only())
    half = quantize(src, tmp_path / "q16.onnx", config=weight_only(scales=ScaleType.FP16))
    model = onnx.load(str(tmp_path / "q16.onnx"))
    types = {t.name: t.data_type for t in model.graph.initializer}
    quantized = [n for n in model.graph.node if n.domain == "com.microsoft"]
    assert len(quantized) == 4 and {types[n.input[2]] for n in quantized} == {TensorProto.FLOAT16}
    assert TensorProto.FLOAT not in {types[n.input[2]] for n in quantized}
    gather = next(n for n in quantized if n.op_type == "GatherBlockQuantized")
    head = next(n for n in quantized if n.name == "lm_head_Q4")
    assert gather.input[2] == head.input[2]  # the tied pair still shares one set of scales
    blocks = (HIDDEN // 32) * FFN + (FFN // 32) * HIDDEN + (HIDDEN // 32) * VOCAB  # up, down, lm_head
    assert sum(w.stored_bytes for w in wide.weights) - sum(w.stored_bytes for w in half.weights) == 2 * blocks
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT  # cast back at the edge
    got16, = models.run(tmp_path / "q16.onnx", ids)
    got32, = models.run(tmp_path / "q32.onnx", ids)
    assert got16.dtype == np.float32 and cosine(got16, got32) > 0.9999
    assert any("unchecked" in w and "--calib-text" in w for w in half.warnings)  # no data saw the activations
    with pytest.raises(UsageError, match="QDQ form keeps float32 scales"):
        weight_only(scales=ScaleType.FP16, form=WeightForm.QDQ)


def test_fp16_scales_spare_the_nodes_named_and_their_tied_partner(tmp_path: Path, ids: dict[str, np.ndarray]) -> None:
    src = models.save(lm(), tmp_path / "lm.onnx")
    quantize(src, tmp_path / "q32.onnx", config=weight_only())
    model = onnx.load(str(tmp_path / "q32.onnx"))
    assert half_scales(model, keep={"up", "lm_head"}) == 1  # down; the embedding shares lm_head's scales
    types = {t.name: t.data_type for t in model.graph.initializer}
    scales = {n.name: types[n.input[2]] for n in model.graph.node if n.domain == "com.microsoft"}
    assert scales == {"up_Q4": TensorProto.FLOAT, "down_Q4": TensorProto.FLOAT16, "lm_head_Q4": TensorProto.FLOAT,
                      "embed_Q4": TensorProto.FLOAT}
    models.save(model, tmp_path / "mixed.onnx")
    assert cosine(models.run(tmp_path / "mixed.onnx", ids)[0], models.run(tmp_path / "q32.onnx", ids)[0]) > 0.9999


def test_untied_embedding_gets_its_own_exact_blocks(tmp_path: Path, ids: dict[str, np.ndarray]) -> None:
    """Its own blocks, read by GatherBlockQuantized, equal onnxruntime's MatMulNBits dequantization of the table."""
    src = models.save(lm(tied=False), tmp_path / "lm.onnx")
    result = quantize(src, tmp_path / "q.onnx", config=weight_only(bits=8, symmetric=True))
    embed = next(w for w in result.weights if w.node == "embed")
    assert embed.tied_to is None and embed.stored_bytes > VOCAB * HIDDEN  # 8 bits per weight plus scales
    model = onnx.load(str(tmp_path / "q.onnx"))
    gather = next(n for n in model.graph.node if n.op_type == "GatherBlockQuantized")
    model.graph.output.append(helper.make_tensor_value_info(gather.output[0], TensorProto.FLOAT, None))
    models.save(model, tmp_path / "exposed.onnx")
    table = numpy_helper.to_array(next(t for t in lm(tied=False).graph.initializer if t.name == "embed.weight"))
    _, rows = models.run(tmp_path / "exposed.onnx", ids)
    assert np.abs(rows - table[ids["input_ids"]]).max() < np.abs(table).max() / 100


def test_qdq_form_is_standard_onnx(tmp_path: Path, ids: dict[str, np.ndarray]) -> None:
    src = models.save(lm(), tmp_path / "lm.onnx")
    result = quantize(src, tmp_path / "q.onnx", config=weight_only(form=WeightForm.QDQ))
    model = onnx.load(str(tmp_path / "q.onnx"))
    assert {o.domain or "ai.onnx": o.version for o in model.opset_import}["ai.onnx"] == 21
    assert "MatMulNBits" not in ops(tmp_path / "q.onnx") and ops(tmp_path / "q.onnx").count("DequantizeLinear") == 3
    assert [s.reason for s in result.skipped] == ["the QDQ form has no blocked Gather: the embedding stays float"]
    assert any("raised from 17 to 21" in w for w in result.warnings)
    ref, = models.run(src, ids)
    assert cosine(ref, models.run(tmp_path / "q.onnx", ids)[0]) > 0.97
    with pytest.raises(UsageError, match="QDQ form writes blocked int4"):
        WeightOnlyConfig(bits=8, form=WeightForm.QDQ)


def test_models_without_weights_to_quantize_are_refused(tmp_path: Path) -> None:
    src = models.save(models.conv_mlp(), tmp_path / "cnn.onnx")  # its only MatMul is [8, 4]: quantizable
    no_matmul = models.save(models.no_quantizable_ops(), tmp_path / "none.onnx")
    with pytest.raises(NothingQuantizedError, match="weight-only mode needs MatMul or embedding-Gather"):
        quantize(no_matmul, tmp_path / "q.onnx", config=weight_only())
    assert not (tmp_path / "q.onnx").exists()
    quantize(src, tmp_path / "cnn.q.onnx", config=weight_only())
    with pytest.raises(ModelError, match=r"already quantized \(\d+ weight_only nodes\)"):
        quantize(tmp_path / "cnn.q.onnx", tmp_path / "again.onnx", config=weight_only())


def test_exclusions_keep_float_with_a_reason(tmp_path: Path) -> None:
    src = models.save(lm(), tmp_path / "lm.onnx")
    config = QuantizeConfig(mode=Mode.WEIGHT_ONLY, exclude_nodes=("lm_*",),
                            weight_only=WeightOnlyConfig(embeddings=False))
    result = quantize(src, tmp_path / "q.onnx", config=config)
    assert {s.name: s.reason for s in result.skipped} == {
        "embed": "embeddings kept float (--no-embeddings)", "lm_head": "excluded by --exclude-nodes"}
    assert any("the lm_head (lm_head) stays float" in w for w in result.warnings)
    assert sorted(ops(tmp_path / "q.onnx")).count("MatMulNBits") == 2


def test_external_data_in_external_data_out(tmp_path: Path, ids: dict[str, np.ndarray]) -> None:
    src = models.externalize(lm(tied=False), tmp_path / "src")
    out = tmp_path / "q.onnx"
    quantize(src, out, config=weight_only())
    sidecars = [p.name for p in tmp_path.iterdir() if p.name.startswith("q.onnx.") and p.name.endswith(".data")]
    assert len(sidecars) == 1
    ref, = models.run(src, ids)
    assert cosine(ref, models.run(out, ids)[0]) > 0.97


def test_genai_folder_files_follow_the_model(tmp_path: Path) -> None:
    folder = tmp_path / "fp32"
    folder.mkdir()
    src = models.save(lm(), folder / "model.onnx")
    (folder / "genai_config.json").write_text(json.dumps({"model": {"decoder": {"filename": "model.onnx"}}}))
    (folder / "tokenizer.json").write_text("{}")
    out_dir = tmp_path / "int4"
    out_dir.mkdir()
    result = quantize(src, out_dir / "model.int4.onnx", config=weight_only())
    assert result.copied == ["genai_config.json", "tokenizer.json"]
    config = json.loads((out_dir / "genai_config.json").read_text())
    assert config["model"]["decoder"]["filename"] == "model.int4.onnx"
    same = quantize(src, folder / "model.int4.onnx", config=weight_only())
    assert same.copied == []
    assert json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]["filename"] == "model.onnx"


def test_slow_path_rules() -> None:
    assert slow_path(4, 32, 4) is None and slow_path(4, 128, 0) is None and slow_path(8, 32, 4) is None
    assert "accuracy level 4" in (slow_path(8, 32, 0) or "")
    assert "16-256" in (slow_path(4, 512, 4) or "")


def test_cli(tmp_path: Path) -> None:
    src = models.save(lm(), tmp_path / "lm.onnx")
    runner = CliRunner()
    done = runner.invoke(app, ["quantize", str(src), "-o", str(tmp_path / "q.onnx"), "--mode", "weight-only",
                               "--weights", "int8", "--accuracy-level", "0", "--json"])
    assert done.exit_code == 0, done.output
    doc = json.loads(done.stdout)
    assert doc["mode"] == "weight-only" and {w["bits"] for w in doc["weights"]} == {8}
    assert any("slow CPU path" in w for w in doc["warnings"])
    stray = runner.invoke(app, ["quantize", str(src), "-o", str(tmp_path / "s.onnx"), "--block-size", "64"])
    assert stray.exit_code == 2 and "--block-size: weight-only options, given without" in stray.output
    wrong = runner.invoke(app, ["quantize", str(src), "-o", str(tmp_path / "w.onnx"), "--mode", "weight-only",
                                "--weights", "uint4"])
    assert wrong.exit_code == 2 and "int4 or int8 weights, not uint4" in wrong.output
    odd = runner.invoke(app, ["quantize", str(src), "-o", str(tmp_path / "o.onnx"), "--mode", "weight-only",
                              "--block-size", "48"])
    assert odd.exit_code == 2 and "power of two from 16 to 256" in odd.output


TINY = Path(__file__).resolve().parents[2] / "sample_models" / "tiny_llm"


def _ratio(fp32: Path, quant: Path) -> float:
    found = validate(fp32, quant, TextData(text=TINY / "eval.txt"),
                     config=ValidateConfig(language=LanguageConfig(prompts=0))).language
    assert found is not None
    return found.perplexity_ratio


def test_gptq_beats_round_to_nearest_at_equal_size_on_a_trained_decoder(tmp_path: Path) -> None:
    """The sample decoder (real trained weights): GPTQ on its calibration text against RTN, blocks of 128."""
    fp32 = TINY / "model.onnx"
    rtn = quantize(fp32, tmp_path / "rtn.onnx", config=weight_only(block_size=128))
    gptq = quantize(fp32, tmp_path / "gptq.onnx", TextData(text=TINY / "calib.txt"),
                    config=weight_only(block_size=128, method=WeightMethod.GPTQ))
    assert gptq.bytes_after == rtn.bytes_after and gptq.calibration_samples > 0
    rtn_ratio, gptq_ratio = _ratio(fp32, tmp_path / "rtn.onnx"), _ratio(fp32, tmp_path / "gptq.onnx")
    assert 1.0 < gptq_ratio < rtn_ratio - 0.005, (gptq_ratio, rtn_ratio)
    with pytest.raises(UsageError, match="GPTQ needs calibration text"):
        quantize(fp32, tmp_path / "none.onnx", config=weight_only(method=WeightMethod.GPTQ))


def test_fp16_scales_keep_the_trained_decoder_and_check_its_activations(tmp_path: Path) -> None:
    fp32 = TINY / "model.onnx"
    result = quantize(fp32, tmp_path / "half.onnx", TextData(text=TINY / "calib.txt"),
                      config=weight_only(method=WeightMethod.GPTQ, scales=ScaleType.FP16))
    assert not [w for w in result.warnings if "--scales fp16" in w]  # GPTQ's text saw every input, in range
    model = onnx.load(str(tmp_path / "half.onnx"))
    types = {t.name: t.data_type for t in model.graph.initializer}
    assert {types[n.input[2]] for n in model.graph.node if n.domain == "com.microsoft"} == {TensorProto.FLOAT16}
    assert _ratio(fp32, tmp_path / "half.onnx") < 1.025


def test_gptq_reads_a_sidecar_in_place(tmp_path: Path) -> None:
    """GPTQ's activations come from a session on the model's own file and sidecar: the same weights
    as from the model with its weights inline."""
    external = tmp_path / "ext" / "model.onnx"
    external.parent.mkdir()
    (tmp_path / "beside").mkdir()
    onnx.save(onnx.load(str(TINY / "model.onnx")), str(external), save_as_external_data=True,
              location="model.onnx.data", size_threshold=0)
    config = weight_only(method=WeightMethod.GPTQ)
    inline = quantize(TINY / "model.onnx", tmp_path / "inline.onnx", TextData(text=TINY / "calib.txt"), config=config)
    beside = quantize(external, tmp_path / "beside" / "model.onnx", TextData(text=TINY / "calib.txt",
                                                                             tokenizer=TINY / "tokenizer.json"),
                      config=config)
    assert inline.calibration_samples == beside.calibration_samples > 0
    weights = [{t.name: numpy_helper.to_array(t).tobytes() for t in onnx.load(str(path)).graph.initializer}
               for path in (tmp_path / "inline.onnx", tmp_path / "beside" / "model.onnx")]
    assert weights[0] == weights[1]


def test_the_mix_raises_the_most_error_per_byte_within_the_budget() -> None:
    """up, down and the tied lm_head/embedding pair (stored once, 64x64): the budget in bits per weight
    covers the codes and scales of every stored weight; a weight is raised when it still fits, by
    error per added byte, and those without an error (RTN's) never are."""
    def mix(bits_per_weight: float, errors: dict[str, float], float32_scales: frozenset[str] = frozenset()
            ) -> list[str]:
        config = weight_only(method=WeightMethod.GPTQ, bits_per_weight=bits_per_weight, scales=ScaleType.FP16)
        return mixed_eight_bit(plan_weights(lm(transposed=False), config), errors, config.weight_only,
                               float32_scales)

    stored = {n.name: n for n in weight_nodes(lm(transposed=False)) if n.name != "embed"}  # the head's blocks
    base = WeightOnlyConfig(method=WeightMethod.GPTQ, scales=ScaleType.FP16)
    four = sum(stored_bytes(n, 4, base) for n in stored.values())
    params = sum(n.params for n in stored.values())
    extra = {name: stored_bytes(n, 8, base) - stored_bytes(n, 4, base) for name, n in stored.items()}

    def within(extra_bytes: int) -> float:
        return (four + extra_bytes) * 8 / params

    errors = {"up": 2.0, "down": 1.0, "lm_head": 3.0}  # per byte: the pair (half up's size) first
    assert mix(within(extra["lm_head"]), errors) == ["lm_head"]
    assert mix(within(extra["lm_head"]) - 0.01, errors) == []  # no weight is smaller than the pair
    assert mix(within(extra["lm_head"]), errors, frozenset({"down"})) == []  # down's float32 scales take room
    assert mix(within(extra["up"] + extra["lm_head"]), errors) == ["lm_head", "up"]
    assert mix(within(extra["up"]), {"up": 10.0, "down": 1.0, "lm_head": 3.0}) == ["up"]  # then the pair won't fit
    assert mix(16, errors) == ["lm_head", "up", "down"]
    assert mix(16, {"up": 2.0}) == ["up"]
    assert mix(4, errors) == []  # below what 4 bits store already
    with pytest.raises(UsageError, match="4-bit MatMulNBits model by GPTQ"):
        weight_only(bits_per_weight=6.0)  # round to nearest has no output error to rank by
    with pytest.raises(UsageError, match="finite number"):
        weight_only(method=WeightMethod.GPTQ, bits_per_weight=float("nan"))


def test_the_mix_spends_its_budget_on_the_trained_decoder(tmp_path: Path) -> None:
    """GPTQ's mix on the sample decoder: more bits per weight, more 8-bit weights and closer to FP32;
    every stored weight averages within the budget."""
    fp32, text = TINY / "model.onnx", TextData(text=TINY / "calib.txt")
    found = []
    for budget in (4.0, 6.0, 7.0):  # 4 bits in blocks of 32 with float32 scales store 5 bits per weight
        out = tmp_path / f"mix{budget}.onnx"
        result = quantize(fp32, out, text, config=weight_only(method=WeightMethod.GPTQ, bits_per_weight=budget))
        quantized = [w for w in result.weights if w.bits]
        average = sum(w.stored_bytes for w in quantized) * 8 / sum(w.params for w in quantized if w.stored_bytes)
        raised = {w.node for w in quantized if w.bits == 8}
        assert average <= max(budget, 5.0) and result.config["weight_only"]["bits_per_weight"] == budget  # type: ignore[index]
        found.append((raised, _ratio(fp32, out)))
    (none, pure), (some, fewer), (more, best) = found
    assert not none and none < some < more, found  # the weights raised at 6 bits stay raised at 7
    assert best < fewer < pure, found


def test_int8_keeps_the_trained_decoder(tmp_path: Path) -> None:
    result = quantize(TINY / "model.onnx", tmp_path / "q8.onnx", config=weight_only(bits=8))
    assert abs(_ratio(TINY / "model.onnx", tmp_path / "q8.onnx") - 1.0) < 0.002
    assert result.size_ratio > 3.0


def test_a_table_the_block_does_not_divide_gets_smaller_blocks_of_its_own(tmp_path: Path,
                                                                          ids: dict[str, np.ndarray]) -> None:
    """Blocks of 128 over a 64-wide embedding: the lm_head pads K to 128, so the table cannot read its
    blocks; it gets blocks of 64 of its own rather than staying float."""
    src = models.save(lm(), tmp_path / "lm.onnx")
    result = quantize(src, tmp_path / "q.onnx", config=weight_only(block_size=128))
    embed = next(w for w in result.weights if w.node == "embed")
    assert embed.bits == 4 and embed.stored_bytes > 0 and not result.skipped
    gather = next(n for n in onnx.load(str(tmp_path / "q.onnx")).graph.node if n.op_type == "GatherBlockQuantized")
    assert next(a.i for a in gather.attribute if a.name == "block_size") == 64
    ref, = models.run(src, ids)
    assert cosine(ref, models.run(tmp_path / "q.onnx", ids)[0]) > 0.97
