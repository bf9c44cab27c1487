"""Policy documents from the Kubernetes documentation (and a few more) that the policy
tests share: the calculation tests evaluate them as data, the traffic tests send packets."""

TEST_NETWORK_POLICY = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: test-network-policy, namespace: default}
spec:
  podSelector: {matchLabels: {role: db}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - ipBlock: {cidr: 172.17.0.0/16, except: [172.17.1.0/24]}
    - namespaceSelector: {matchLabels: {project: myproject}}
    - podSelector: {matchLabels: {role: frontend}}
    ports: [{protocol: TCP, port: 6379}]
  egress:
  - to: [{ipBlock: {cidr: 10.0.0.0/24}}]
    ports: [{protocol: TCP, port: 5978}]
"""

AND_NS_POD = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: and-namespace-pod, namespace: dev}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {user: alice}}
      podSelector: {matchLabels: {role: client}}
"""

MULTI_PORT_EGRESS = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: multi-port-egress, namespace: default}
spec:
  podSelector: {matchLabels: {role: db}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.0.0.0/24}}]
    ports: [{protocol: TCP, port: 32000, endPort: 32768}]
"""

ALLOW_ALL_INGRESS = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all-ingress, namespace: default}
spec: {podSelector: {}, ingress: [{}], policyTypes: [Ingress]}
"""

ALLOW_ALL_EGRESS = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all-egress, namespace: default}
spec: {podSelector: {}, egress: [{}], policyTypes: [Egress]}
"""

DEFAULT_DENY_INGRESS = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-ingress, namespace: default}
spec: {podSelector: {}, policyTypes: [Ingress]}
"""

DEFAULT_DENY_EGRESS = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-egress, namespace: default}
spec: {podSelector: {}, policyTypes: [Egress]}
"""

DEFAULT_DENY_ALL = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-all, namespace: default}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
"""

DB_FROM_FRONTEND = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-frontend, namespace: default}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress: [{from: [{podSelector: {matchLabels: {role: frontend}}}], ports: [{port: 6379}]}]
"""

# Ordered global policies that Log and Pass frontend traffic to DB_FROM_FRONTEND and deny
# the rest.
GNP_PASS = """
apiVersion: l3fabric.io/v1
kind: GlobalNetworkPolicy
metadata: {name: pass-frontend}
spec:
  order: 1
  selector: role == "db"
  ingress:
  - {action: Log, source: {selector: role == "frontend"}}
  - {action: Pass, source: {selector: role == "frontend"}}
---
apiVersion: l3fabric.io/v1
kind: GlobalNetworkPolicy
metadata: {name: deny-rest}
spec:
  order: 2
  selector: role == "db"
  ingress: [{action: Deny}]
---""" + DB_FROM_FRONTEND

# The Kubernetes docs' "namespaceSelector OR podSelector" example, as written there.
OR_NS_POD = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: or-namespace-pod, namespace: dev}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {project: myproject}}
    - podSelector: {matchLabels: {role: client}}
"""

# The same shape, selecting the policy's own namespace (dev, user=alice) instead.
OR_OWN_NS_POD = OR_NS_POD.replace("{project: myproject}", "{user: alice}")

NAMED_PORT = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-http, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - ports: [{port: http}, {port: dns, protocol: UDP}]
"""

EGRESS_NAMED_PORT = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-http, namespace: default}
spec:
  podSelector: {matchLabels: {role: frontend}}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}]
    ports: [{port: http}]
"""

# Policies the lifecycle tests change while pods run (placeholders in capitals).
FROM_TEAM_A = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-team-a, namespace: default}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: a}}}]}]
"""
FROM_BLOCK = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-block, namespace: default}
spec:
  podSelector: {matchLabels: {role: db}}
  ingress: [{from: [{ipBlock: {cidr: 172.17.0.0/16, except: [EXCEPT]}}]PORTS}]
"""
ORDERED_GNP = """
apiVersion: l3fabric.io/v1
kind: GlobalNetworkPolicy
metadata: {name: NAME}
spec:
  order: ORDER
  selector: role == "db"
  ingress: [{action: ACTION, protocol: TCP, destination: {ports: [80]}}]
"""
VAULT_CLOSED = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: vault-closed, namespace: default}
spec: {podSelector: {matchLabels: {role: vault}}, policyTypes: [Ingress]}
"""
EGRESS_TO_FRONTENDS = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-to-frontends, namespace: default}
spec:
  podSelector: {matchLabels: {role: frontend}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {role: frontend}}}]}]
"""
