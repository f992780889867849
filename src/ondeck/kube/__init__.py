"""Kubernetes: manifests rendered from the spec (render.py), pure."""
