"""FedPM aggregator: the Flower ServerApp that aggregates site updates and publishes models.

Entry point: ``aggregator.server_app:app`` (named in pyproject's ``[tool.flwr.app.components]``).
"""
