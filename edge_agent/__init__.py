"""FedPM edge agent: one site's MQTT ingest, local store, ONNX inference and health topics.

Processes: a supervisor (:mod:`edge_agent.agent`) runs an ingest worker
(:mod:`edge_agent.ingest`) and an inference worker (:mod:`edge_agent.inference`); they meet
only at the local SQLite store (:mod:`edge_agent.store`), which the Flower ClientApp
(:mod:`edge_agent.client_app`) also reads. Imports only ``models``; this module stays empty
so that importing the store does not load paho, onnxruntime or torch.
"""
