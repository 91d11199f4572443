"""The distributed runtime: workers and a coordinator that execute a Plan over ZeroMQ."""
