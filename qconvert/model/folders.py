"""Model folders: a language model ships as a folder (onnxruntime-genai's `genai_config.json`, the
tokenizer's files, Hugging Face's configs) around its .onnx file. A quantized model written to
another folder gets copies of them, the genai config pointing at the new file, so the result runs
with onnxruntime-genai as it is."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from qconvert.errors import ModelError
from qconvert.model.files import is_same_file, write_atomically

GENAI_CONFIG = "genai_config.json"
# Files of a model folder that describe the model rather than hold its weights.
COMPANIONS = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "merges.txt", "tokenizer.model", "chat_template.jinja", "config.json", "generation_config.json",
)


def model_folder(model: Path) -> Path | None:
    """The folder of an onnxruntime-genai model (`genai_config.json` beside the .onnx file), else None."""
    return model.parent if (model.parent / GENAI_CONFIG).is_file() else None


def genai_config(folder: Path) -> dict[str, object]:
    """A folder's genai_config.json, parsed; a file that is not JSON is the model's error."""
    path = folder / GENAI_CONFIG
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path} is not readable JSON: {exc}", hint="fix or remove genai_config.json") from exc
    if not isinstance(loaded, dict):
        raise ModelError(f"{path} holds no JSON object", hint="fix or remove genai_config.json")
    return loaded


def copy_model_folder(model: Path, output: Path) -> list[str]:
    """Beside `output`, copies of the companions of `model`'s genai folder, the genai config's decoder
    filename set to `output`'s name. Nothing when `model` is not in such a folder, or `output` is in
    the same folder (its config then still names the original). Returns the files written."""
    source = model_folder(model)
    if source is None or is_same_file(source, output.parent):
        return []
    written = []
    for name in COMPANIONS:
        if (source / name).is_file():
            shutil.copyfile(source / name, output.parent / name)
            written.append(name)
    config = genai_config(source)
    decoder = config.get("model", {})
    if isinstance(decoder, dict) and isinstance(decoder.get("decoder"), dict):
        decoder["decoder"]["filename"] = output.name
    write_atomically(output.parent / GENAI_CONFIG, json.dumps(config, indent=4) + "\n")
    return [GENAI_CONFIG, *written]
