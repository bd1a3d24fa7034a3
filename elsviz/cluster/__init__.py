"""The Ray engine: one machine over a training set split into shards on a Ray cluster, with the
single engine's results (docs/SCALING.md). Ray is an optional extra (pip install elsviz[cluster]):
nothing here imports it until an engine connects.

    Engine(train, "bbels", device="ray", shards=2)      # elsviz.Engine dispatches here

Rooms: engine (the driver's RayEngine and its pool of shards), actors (the shard), merge (the
exact merge of the shards' statistics), connect (the address, the connection, a bad one refused).
"""
from .connect import ENV, address_setting


def __getattr__(name):
    if name == "RayEngine":  # on use: the engine module needs torch, not ray, but stays out of `import elsviz.cluster`
        from .engine import RayEngine

        return RayEngine
    raise AttributeError(name)


__all__ = ["ENV", "RayEngine", "address_setting"]
