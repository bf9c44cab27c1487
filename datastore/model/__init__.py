"""The typed resource model of l3fabric; see the package modules for each domain."""

from datastore.model.policy import (
    ALIASES as ALIASES,
)
from datastore.model.policy import (
    API_VERSION as API_VERSION,
)
from datastore.model.policy import (
    DEFAULT_MAX_PREFIXES as DEFAULT_MAX_PREFIXES,
)
from datastore.model.policy import (
    KINDS as KINDS,
)
from datastore.model.policy import (
    MAX_PREFIXES_LIMIT as MAX_PREFIXES_LIMIT,
)
from datastore.model.policy import (
    MAX_VALUE_BYTES as MAX_VALUE_BYTES,
)
from datastore.model.policy import (
    BGPConfiguration as BGPConfiguration,
)
from datastore.model.policy import (
    BGPConfigurationSpec as BGPConfigurationSpec,
)
from datastore.model.policy import (
    BGPPeer as BGPPeer,
)
from datastore.model.policy import (
    BGPPeerSpec as BGPPeerSpec,
)
from datastore.model.policy import (
    BGPPeerStatus as BGPPeerStatus,
)
from datastore.model.policy import (
    EndpointPort as EndpointPort,
)
from datastore.model.policy import (
    EntityRule as EntityRule,
)
from datastore.model.policy import (
    FrozenMap as FrozenMap,
)
from datastore.model.policy import (
    GlobalNetworkPolicy as GlobalNetworkPolicy,
)
from datastore.model.policy import (
    GlobalNetworkPolicySpec as GlobalNetworkPolicySpec,
)
from datastore.model.policy import (
    GracefulRestart as GracefulRestart,
)
from datastore.model.policy import (
    ICMPMatch as ICMPMatch,
)
from datastore.model.policy import (
    IPAMConfig as IPAMConfig,
)
from datastore.model.policy import (
    IPAMConfigSpec as IPAMConfigSpec,
)
from datastore.model.policy import (
    IPBlock as IPBlock,
)
from datastore.model.policy import (
    IPPool as IPPool,
)
from datastore.model.policy import (
    IPPoolSpec as IPPoolSpec,
)
from datastore.model.policy import (
    IPReservation as IPReservation,
)
from datastore.model.policy import (
    IPReservationSpec as IPReservationSpec,
)
from datastore.model.policy import (
    Metadata as Metadata,
)
from datastore.model.policy import (
    Namespace as Namespace,
)
from datastore.model.policy import (
    NetworkPolicy as NetworkPolicy,
)
from datastore.model.policy import (
    NetworkPolicyPeer as NetworkPolicyPeer,
)
from datastore.model.policy import (
    NetworkPolicyPort as NetworkPolicyPort,
)
from datastore.model.policy import (
    NetworkPolicyRule as NetworkPolicyRule,
)
from datastore.model.policy import (
    NetworkPolicySpec as NetworkPolicySpec,
)
from datastore.model.policy import (
    Node as Node,
)
from datastore.model.policy import (
    NodeBGPSpec as NodeBGPSpec,
)
from datastore.model.policy import (
    NodeSpec as NodeSpec,
)
from datastore.model.policy import (
    NodeStatus as NodeStatus,
)
from datastore.model.policy import (
    NodeStatusBody as NodeStatusBody,
)
from datastore.model.policy import (
    PortMatch as PortMatch,
)
from datastore.model.policy import (
    Resource as Resource,
)
from datastore.model.policy import (
    Rule as Rule,
)
from datastore.model.policy import (
    ValidationError as ValidationError,
)
from datastore.model.policy import (
    WorkloadEndpoint as WorkloadEndpoint,
)
from datastore.model.policy import (
    WorkloadEndpointSpec as WorkloadEndpointSpec,
)
from datastore.model.policy import (
    decode as decode,
)
from datastore.model.policy import (
    encode as encode,
)
from datastore.model.policy import (
    key_for as key_for,
)
from datastore.model.policy import (
    key_prefix_for_kind as key_prefix_for_kind,
)
from datastore.model.policy import (
    parse_document as parse_document,
)
from datastore.model.policy import (
    resolve_kind as resolve_kind,
)
