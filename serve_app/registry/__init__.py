"""models.yaml -> typed, validated model specs."""

from serve_app.registry.loader import load_registry, parse_registry
from serve_app.registry.models import AutoscalingSpec, ModelSpec, RegistrySpec, ResourcesSpec, RouterSpec

__all__ = [
    "AutoscalingSpec",
    "ModelSpec",
    "RegistrySpec",
    "ResourcesSpec",
    "RouterSpec",
    "load_registry",
    "parse_registry",
]
