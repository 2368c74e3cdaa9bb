"""What a user would write instead of FedPM's serving: FastAPI + PyTorch, windows as JSON lists.

The baseline of ``bench/bench_serving.py``: one route taking ``{"windows": [[...], ...]}`` as a
pydantic ``list[list[float]]``, a tensor made from it, the same WDCNN in PyTorch (eval mode, no
grad), and the class probabilities back as JSON. Run as ``python -m bench.naive_service PORT``.
"""

from __future__ import annotations

import sys

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from models.network import build_model

app = FastAPI()
net = build_model(seed=0)
net.eval()


class Request(BaseModel):
    """Windows of one channel."""

    windows: list[list[float]]


@app.post("/predict")
def predict(body: Request) -> dict[str, list[list[float]]]:
    """Class probabilities per window."""
    with torch.no_grad():
        logits, _ = net(torch.tensor(body.windows, dtype=torch.float32).unsqueeze(1))
        return {"probabilities": torch.softmax(logits, dim=1).tolist()}


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
