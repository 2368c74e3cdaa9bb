"""TLS and SuperNode authentication with real SuperLink / SuperNode processes on loopback.

One federation serves every check (a round costs ~20 s on a small machine): the SuperLink runs
with TLS and ``--enable-supernode-auth``; two sites whose public keys were registered train a
round and publish a model; a SuperNode with an unregistered key and one that trusts another CA
try to join beside them and are refused; then an operator revokes one site.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fedpm.demo import app_dir
from fedpm.federation import CONNECTION, LocalFederation, SiteNode
from fedpm.pki import write_node_key, write_server_tls
from fedpm.procs import ProcessGroup
from fedpm.seed_store import seed_store
from models.registry import FileRegistry
from models.simulator import MachineProfile

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

SITES = {
    "plant-north": (1797.0, ("normal", "inner_race")),
    "plant-south": (1750.0, ("normal", "outer_race")),
}


def test_tls_federation_admits_registered_nodes_only(tmp_path: Path) -> None:
    # Prepare: a CA and server certificate, a registered key pair per site, and two outsiders
    tls = write_server_tls(tmp_path / "tls")
    keys = tmp_path / "node-keys"
    nodes = []
    for i, (site, (rpm, modes)) in enumerate(SITES.items()):
        store = tmp_path / site / "store.sqlite"
        store.parent.mkdir()
        seed_store(store, MachineProfile(rpm=rpm), modes, windows_per_mode=20, seed=10 * i)
        nodes.append(SiteNode(site, store, write_node_key(keys, site)))
    stranger = SiteNode("stranger", tmp_path / "stranger.sqlite", write_node_key(keys, "stranger"))
    other_ca = write_server_tls(tmp_path / "other-tls").ca_cert
    outsider = SiteNode("outsider", tmp_path / "outsider.sqlite", nodes[0].auth_key)
    registry_dir = tmp_path / "registry"
    lines: list[str] = []

    # Execute
    with ProcessGroup(tmp_path / "logs") as group:
        federation = LocalFederation(group, tmp_path, tls=tls, node_auth=True)
        federation.start(nodes)
        unknown = federation.start_supernode(stranger)
        untrusting = federation.start_supernode(outsider, root_certificates=other_ca)
        code = federation.run(
            app_dir(),
            {"num-server-rounds": 1, "min-sites": 2, "registry-dir": str(registry_dir)},
            on_line=lines.append,
        )
        listed = federation.nodes()
        revoked = str(listed[-1]["node-id"])
        federation.flwr("supernode", "unregister", revoked, CONNECTION)
        after_revoking = {str(n["node-id"]): n["status"] for n in federation.nodes()}
        unknown_code = unknown.proc.wait(timeout=120)
        untrusting_code = untrusting.proc.wait(timeout=120)
        superlink_log = group.children[0].tail(400)

    # Assert: the round ran over TLS between the two registered sites and published a model
    assert code == 0, "\n".join(lines[-30:])
    (card,) = FileRegistry(registry_dir).cards()
    assert card.sites == tuple(sorted(SITES))
    # only the registered nodes are known to the SuperLink, both online
    assert len(listed) == 2
    assert {n["status"] for n in listed} == {"online"}
    # an operator revokes a site: the SuperLink marks it so, the other stays online
    assert after_revoking.pop(revoked) == "unregistered"
    assert list(after_revoking.values()) == ["online"]
    # the unregistered key was refused at activation, and that SuperNode gave up
    assert unknown_code != 0
    assert "Failed to activate SuperNode" in unknown.tail(40)
    assert "No SuperNode found with the given public key" in superlink_log
    # the SuperNode that does not trust the federation's CA never got past the TLS handshake
    assert untrusting_code != 0
    assert "CERTIFICATE_VERIFY_FAILED" in untrusting.tail(200)


def test_node_auth_without_tls_is_refused_before_anything_starts(tmp_path: Path) -> None:
    # Execute / Assert
    with (
        ProcessGroup(tmp_path / "logs") as group,
        pytest.raises(ValueError, match="needs TLS"),
    ):
        LocalFederation(group, tmp_path, node_auth=True)
    assert group.children == []


def test_node_auth_needs_a_key_for_every_site(tmp_path: Path) -> None:
    # Prepare
    tls = write_server_tls(tmp_path / "tls")

    # Execute / Assert
    with ProcessGroup(tmp_path / "logs") as group:
        federation = LocalFederation(group, tmp_path, tls=tls, node_auth=True)
        with pytest.raises(ValueError, match=r"\['plant-a'\] have no key"):
            federation.start([SiteNode("plant-a", tmp_path / "a.sqlite")])
        assert group.children == []
