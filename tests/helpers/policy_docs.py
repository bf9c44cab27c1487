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
