"""Autoscaling a ReplicaSet from the gateway's load (`serve_gateway.py --autoscale`): the pure
decision (`policy`, with its `defaults`), the actuator that changes `replica_num` (`scaler`),
the control loop (`controller`, with its `spend_meter`), the gateway extension that runs it
(`extension`) and the command-line flags (`cli`).

Imports nothing itself: serve_gateway.py imports `autoscale.cli` for its --help.
"""
