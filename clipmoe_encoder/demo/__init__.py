"""The embedded default run: a procedural image-caption world, a small dense CLIP trained on it,
DMU and its baselines, and a zero-shot comparison (`clipmoe demo`)."""

from .world import (
    Scene,
    WorldSettings,
    classification_tasks,
    make_scene,
    read_scenes,
    vocabulary,
    write_world,
)

__all__ = ["Scene", "WorldSettings", "classification_tasks", "make_scene", "read_scenes", "vocabulary", "write_world"]
