"""Peer for benches/gpu/bench.sh: Hugging Face transformers fp16 on the same files, batch 1.
usage: hf_peer.py MODEL_DIR FILE...   (MODEL_DIR in the Hugging Face layout, e.g. from
`whisperd convert --to safetensors`). Prints the speed in x real time."""
import sys, time

import torch
from transformers import pipeline

model, files = sys.argv[1], sys.argv[2:]
asr = pipeline("automatic-speech-recognition", model=model, torch_dtype=torch.float16, device="cuda:0")
asr(files[0])  # warm-up
import soundfile as sf  # noqa: E402 (only needed after the model loads)
audio = sum(sf.info(f).duration for f in files)
t0 = time.perf_counter()
for f in files:
    asr(f, return_timestamps=True)
print(round(audio / (time.perf_counter() - t0), 1))
