"""fabricctl, l3fabric's command line (entry point: `fabricctl.cli.main`)."""

import os

# gRPC's C core logs each failed TLS handshake on stderr, several lines per retry; fabricctl
# reports the failure as one line of its own instead. gRPC reads this when it is imported,
# hence here, before any fabricctl module imports it. A GRPC_VERBOSITY the user set wins.
os.environ.setdefault("GRPC_VERBOSITY", "NONE")
