#!/usr/bin/env python3
"""SmolLM2-135M-Instruct as Transformers.js loads it, made from the same GGUF the other engines
run, for tests/bench/peers.mjs --webgpu.

    python3 export_onnx.py models/SmolLM2-135M-Instruct.Q4_1.gguf models/onnx/SmolLM2-135M-Instruct

Writes a model directory in the Hub layout Transformers.js reads: config.json, tokenizer files
and onnx/model.onnx (fp32, with the KV cache as inputs/outputs: optimum's text-generation-with-past
export) and onnx/model_q4.onnx (its MatMuls as 4-bit MatMulNBits, block 32, as Transformers.js'
own quantisation script makes `q4`). The GGUF's Q4_1 weights are dequantised by transformers on
load, so every engine runs the same numbers up to the re-quantisation.

Needs (PyPI; outside the test suite): torch==2.9.1 transformers==4.57.1 accelerate
"optimum-onnx[onnxruntime]==0.1.0" onnx_ir gguf (pinned: unpinned, pip backtracks for an hour).
"""
import argparse
import logging
import shutil
import tempfile
from pathlib import Path

import onnx
import torch
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
from optimum.exporters.onnx import main_export
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("gguf", type=Path)
    ap.add_argument("out", type=Path)
    a = ap.parse_args()
    logging.getLogger("onnxruntime").setLevel(logging.WARNING)
    out = a.out
    (out / "onnx").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        hf = Path(tmp) / "hf"
        model = AutoModelForCausalLM.from_pretrained(a.gguf.parent, gguf_file=a.gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(a.gguf.parent, gguf_file=a.gguf.name)
        model.save_pretrained(hf)
        tokenizer.save_pretrained(hf)
        exported = Path(tmp) / "onnx"
        main_export(str(hf), output=exported, task="text-generation-with-past", opset=17, device="cpu")
        for f in exported.iterdir():
            if f.suffix == ".onnx" or f.name.endswith(".onnx_data"):
                continue
            shutil.copy(f, out / f.name)
        fp32 = onnx.load(exported / "model.onnx")
        onnx.save(fp32, out / "onnx" / "model.onnx")
        q = MatMulNBitsQuantizer(fp32, block_size=32, is_symmetric=True)
        q.process()
        onnx.save(q.model.model, out / "onnx" / "model_q4.onnx")
    for f in sorted((out / "onnx").iterdir()):
        print(f"{f}: {f.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
