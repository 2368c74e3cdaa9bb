"""A real Flower federation on loopback: SuperLink + SuperNode processes, run via `flwr run`."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedpm.demo import app_dir
from fedpm.federation import LocalFederation, SiteNode
from fedpm.procs import ProcessGroup
from fedpm.seed_store import seed_store
from models.registry import FileRegistry
from models.runtime import OnnxClassifier
from models.simulator import MachineProfile

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

SITES = {
    "plant-north": (1797.0, ("normal", "inner_race", "ball")),
    "plant-south": (1750.0, ("normal", "outer_race", "inner_race")),
}


def test_federated_rounds_publish_verified_models(tmp_path: Path) -> None:
    # Prepare
    nodes = []
    for i, (site, (rpm, modes)) in enumerate(SITES.items()):
        store = tmp_path / site / "store.sqlite"
        store.parent.mkdir()
        seed_store(store, MachineProfile(rpm=rpm), modes, windows_per_mode=50, seed=10 * i)
        nodes.append(SiteNode(site, store))
    registry_dir = tmp_path / "registry"
    lines: list[str] = []

    # Execute
    with ProcessGroup(tmp_path / "logs") as group:
        federation = LocalFederation(group, tmp_path)
        federation.start(nodes)
        code = federation.run(
            app_dir(),
            {"num-server-rounds": 2, "min-sites": 2, "registry-dir": str(registry_dir)},
            on_line=lines.append,
        )

    # Assert
    assert code == 0, "\n".join(lines[-30:])
    registry = FileRegistry(registry_dir)
    cards = registry.cards()
    assert [c.server_round for c in cards] == [1, 2]
    assert len({c.run_id for c in cards}) == 1
    for card in cards:
        assert card.sites == tuple(sorted(SITES))
        for site in SITES:
            metrics = card.site_metrics[site]
            assert 0.0 <= metrics["eval-accuracy"] <= 1.0
            assert metrics["train-loss"] > 0
            # each phase keeps its own example count: 80 % of the windows train, 20 % evaluate
            assert metrics["train-examples"] == 4 * metrics["eval-examples"]
        # the card's figures are the example-weighted means over the sites
        eval_weights = {s: card.site_metrics[s]["eval-examples"] for s in SITES}
        expected = sum(
            card.site_metrics[s]["eval-accuracy"] * w for s, w in eval_weights.items()
        ) / sum(eval_weights.values())
        assert card.metrics["eval-accuracy"] == pytest.approx(expected)
        _, data = registry.load_verified(card.version)
        model = OnnxClassifier(data)
        assert model.metadata.provenance.server_round == card.server_round
        assert model.metadata.provenance.sites == card.sites
        assert model.metadata.class_names == ("normal", "inner_race", "outer_race", "ball")
    # no stray staging folders: every publish was atomic
    assert not any((registry_dir / ".staging").iterdir())
