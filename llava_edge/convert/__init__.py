"""The torch side of llava-edge: load Hugging Face checkpoints, finetune, export ONNX + GGUF.

Needs the `convert` extra (torch, transformers, safetensors, sentencepiece, onnx).
"""
