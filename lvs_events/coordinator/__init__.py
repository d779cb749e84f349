"""The lvs-events coordinator: gRPC in front of the event log in etcd."""
