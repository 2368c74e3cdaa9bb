"""FedPM serving: the FastAPI + onnxruntime failure-prediction API for ERP/CMMS systems.

Build the application with :func:`serving.app.create_app` (settings from
:mod:`serving.settings`), or run it with ``python -m serving --registry DIR --port N``.
:class:`serving.predictor.Predictor` holds the served model: the newest registry version whose
sha256 matches its card, swapped atomically when a new one is loaded.

This package imports ``models`` and third-party libraries only, never ``edge_agent``,
``aggregator`` or ``fedpm``; it stays light (no torch) so replicas start fast.
"""
