"""The typed resource model of l3fabric (docs/architecture.md §4): every kind in etcd, validated.

The package's modules, one room each: ``fields`` (the validator kit), ``resource`` (the
framing and metadata every kind shares), ``ipam``, ``bgp``, ``policy``, ``felix``
(FelixConfiguration, HostEndpoint), ``node`` (Node, Namespace, NodeStatus) and
``workload`` (one module per domain of kinds), and ``codec`` (the registry of kinds,
their keys, bytes <-> resource). Import from here: ``from datastore import model``;
``model.WorkloadEndpoint``.

Owned here: one frozen dataclass per kind, the ``apiVersion``/``kind``/``metadata``/``spec``
framing, strict validation (unknown fields, wrong types and out-of-range values are errors
naming the JSON field path), and the bytes <-> resource codec used for etcd values.

Invariants:

* A resource object that exists is valid: the only ways to build one from data are
  ``from_dict``/``parse_document``/``decode``, and they validate everything.
* ``Cls.from_dict(res.to_dict()) == res`` for every resource, and ``to_dict`` is the framed
  object written to etcd (``encode``) and shown by ``fabricctl get -o yaml``.
* Everything is immutable and hashable (labels are :class:`FrozenMap`, lists are tuples,
  selectors are canonical ASTs), so the calculation layer can use resources as dict keys
  and compare old with new cheaply.

Failure mode: a bad value raises :class:`ValidationError` ``"<key>: <path>: <message>"``
(key relative to ``/l3fabric/v1/``). The agent then keeps the last good version of that key
(docs/architecture.md, "Last good values"); nothing here logs or counts, that is the
caller's job.

Conventions of the wire format: JSON ``null`` is the same as an absent field (as in
Kubernetes); namespaced kinds without ``metadata.namespace`` are in ``default`` (as with
kubectl); Kubernetes server-populated metadata (``uid``, ``resourceVersion``,
``creationTimestamp``, ...) is accepted and dropped so ``kubectl get -o yaml`` output
applies unchanged.
"""

from datastore.labelselector import FrozenMap, ValidationError
from datastore.model.bgp import (
    DEFAULT_MAX_PREFIXES,
    MAX_PREFIXES_LIMIT,
    BGPConfiguration,
    BGPConfigurationSpec,
    BGPPeer,
    BGPPeerSpec,
    GracefulRestart,
)
from datastore.model.codec import (
    ALIASES,
    KINDS,
    MAX_VALUE_BYTES,
    decode,
    decode_canonical_endpoint,
    encode,
    key_for,
    key_prefix_for_kind,
    parse_document,
    resolve_kind,
)
from datastore.model.felix import (
    DEFAULT_FAILSAFE_INBOUND,
    DEFAULT_FAILSAFE_OUTBOUND,
    FelixConfiguration,
    FelixConfigurationSpec,
    HostEndpoint,
    HostEndpointSpec,
    ProtoPort,
)
from datastore.model.ipam import (
    IPAMConfig,
    IPAMConfigSpec,
    IPPool,
    IPPoolSpec,
    IPReservation,
    IPReservationSpec,
)
from datastore.model.node import (
    BGPPeerStatus,
    Namespace,
    Node,
    NodeBGPSpec,
    NodeSpec,
    NodeStatus,
    NodeStatusBody,
)
from datastore.model.policy import (
    EntityRule,
    GlobalNetworkPolicy,
    GlobalNetworkPolicySpec,
    ICMPMatch,
    IPBlock,
    NetworkPolicy,
    NetworkPolicyPeer,
    NetworkPolicyPort,
    NetworkPolicyRule,
    NetworkPolicySpec,
    PortMatch,
    Rule,
    StagedGlobalNetworkPolicy,
    StagedNetworkPolicy,
)
from datastore.model.resource import (
    API_VERSION,
    Metadata,
    Resource,
    SpecResource,
)
from datastore.model.workload import (
    EndpointPort,
    WorkloadEndpoint,
    WorkloadEndpointSpec,
)

__all__ = [
    "ALIASES",
    "API_VERSION",
    "DEFAULT_FAILSAFE_INBOUND",
    "DEFAULT_FAILSAFE_OUTBOUND",
    "DEFAULT_MAX_PREFIXES",
    "KINDS",
    "MAX_PREFIXES_LIMIT",
    "MAX_VALUE_BYTES",
    "BGPConfiguration",
    "BGPConfigurationSpec",
    "BGPPeer",
    "BGPPeerSpec",
    "BGPPeerStatus",
    "EndpointPort",
    "EntityRule",
    "FelixConfiguration",
    "FelixConfigurationSpec",
    "FrozenMap",
    "GlobalNetworkPolicy",
    "GlobalNetworkPolicySpec",
    "GracefulRestart",
    "HostEndpoint",
    "HostEndpointSpec",
    "ICMPMatch",
    "IPAMConfig",
    "IPAMConfigSpec",
    "IPBlock",
    "IPPool",
    "IPPoolSpec",
    "IPReservation",
    "IPReservationSpec",
    "Metadata",
    "Namespace",
    "NetworkPolicy",
    "NetworkPolicyPeer",
    "NetworkPolicyPort",
    "NetworkPolicyRule",
    "NetworkPolicySpec",
    "Node",
    "NodeBGPSpec",
    "NodeSpec",
    "NodeStatus",
    "NodeStatusBody",
    "PortMatch",
    "ProtoPort",
    "Resource",
    "Rule",
    "SpecResource",
    "StagedGlobalNetworkPolicy",
    "StagedNetworkPolicy",
    "ValidationError",
    "WorkloadEndpoint",
    "WorkloadEndpointSpec",
    "decode",
    "decode_canonical_endpoint",
    "encode",
    "key_for",
    "key_prefix_for_kind",
    "parse_document",
    "resolve_kind",
]
