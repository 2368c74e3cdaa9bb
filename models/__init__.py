"""FedPM's shared ML core: frame codec, simulator, signal processing, network, ONNX, registry.

``edge_agent``, ``aggregator`` and ``serving`` import this package; it imports none of them
and does no network I/O. Import submodules directly (``from models.frame import decode``):
this module stays empty so that light processes (the Flower ClientApp) do not pay for torch.
"""
