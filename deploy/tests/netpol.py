"""A small NetworkPolicy evaluator: may pod A open a TCP/UDP connection to pod B's port?

Implements the Kubernetes semantics the manifests rely on: policies are additive allow-lists;
a pod selected by no policy of a direction is open in that direction; a connection needs the
source's egress and the destination's ingress to allow it. Peers: podSelector, namespaceSelector
(both together = AND), ipBlock (only ever matches an address outside the cluster's pods).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Manifest = dict[str, Any]


@dataclass(frozen=True)
class Pod:
    """A pod as policies see it: namespace, labels and named container ports."""

    name: str
    namespace: str
    labels: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)
    external: bool = False  # an address outside the cluster (matched only by ipBlock)

    def namespace_labels(self) -> dict[str, str]:
        """The labels every namespace gets automatically."""
        return {"kubernetes.io/metadata.name": self.namespace}


def selector_matches(selector: Manifest | None, labels: dict[str, str]) -> bool:
    """A LabelSelector: matchLabels and matchExpressions (an empty selector matches all)."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def pods_from_template(obj: Manifest) -> Pod:
    """The pod a Deployment, StatefulSet or Job would create."""
    template = obj["spec"]["template"]
    ports: dict[str, int] = {}
    for container in template["spec"]["containers"]:
        for port in container.get("ports", []):
            if "name" in port:
                ports[port["name"]] = port["containerPort"]
    return Pod(
        name=obj["metadata"]["name"],
        namespace=obj["metadata"].get("namespace", "default"),
        labels=dict(template["metadata"].get("labels", {})),
        ports=ports,
    )


def _peer_matches(peer: Manifest, policy_ns: str, other: Pod) -> bool:
    if "ipBlock" in peer:
        return other.external
    if other.external:
        return False
    pod_sel = peer.get("podSelector")
    ns_sel = peer.get("namespaceSelector")
    if ns_sel is None:
        namespace_ok = other.namespace == policy_ns
    else:
        namespace_ok = selector_matches(ns_sel, other.namespace_labels())
    pod_ok = True if pod_sel is None else selector_matches(pod_sel, other.labels)
    return namespace_ok and pod_ok


def _port_matches(rule_ports: list[Manifest] | None, port: int, protocol: str, dst: Pod) -> bool:
    if not rule_ports:
        return True
    for spec in rule_ports:
        if spec.get("protocol", "TCP") != protocol:
            continue
        wanted = spec.get("port")
        if wanted is None:
            return True
        number = dst.ports.get(wanted) if isinstance(wanted, str) else wanted
        end = spec.get("endPort", number)
        if number is not None and end is not None and number <= port <= end:
            return True
    return False


def _direction_allows(
    policies: list[Manifest], pod: Pod, direction: str, other: Pod, port: int, protocol: str
) -> bool:
    # `other` is the peer; the port always belongs to the destination.
    dst = other if direction == "Egress" else pod
    selecting = [
        p
        for p in policies
        if p["metadata"].get("namespace", "default") == pod.namespace
        and not pod.external
        and selector_matches(p["spec"].get("podSelector", {}), pod.labels)
        and direction in p["spec"].get("policyTypes", ["Ingress"])
    ]
    if not selecting:
        return True
    key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    for policy in selecting:
        policy_ns = policy["metadata"].get("namespace", "default")
        for rule in policy["spec"].get(key) or []:
            peers = rule.get(peers_key)
            peer_ok = not peers or any(_peer_matches(p, policy_ns, other) for p in peers)
            if peer_ok and _port_matches(rule.get("ports"), port, protocol, dst):
                return True
    return False


def allowed(
    policies: list[Manifest], src: Pod, dst: Pod, port: int | str, protocol: str = "TCP"
) -> bool:
    """Whether ``src`` may connect to ``dst`` on ``port`` (a number or the pod's port name)."""
    number = dst.ports[port] if isinstance(port, str) else port
    return _direction_allows(policies, src, "Egress", dst, number, protocol) and (
        _direction_allows(policies, dst, "Ingress", src, number, protocol)
    )
