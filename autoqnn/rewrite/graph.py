"""A read-only view of one level of a Functional or Sequential model's graph."""

from __future__ import annotations

import keras


class ModelGraph:
    """Producers, consumers and outputs of the layers of one model level.

    Nested models are single nodes here (they are rewritten on their own).

    Args:
        model: a built Functional or Sequential model.
    """

    def __init__(self, model):
        self.model = model
        self.layers = [op for op in _operations(model)]
        self._producers: dict[int, list] = {id(layer): [] for layer in self.layers}
        self._consumers: dict[int, list] = {id(layer): [] for layer in self.layers}
        if isinstance(model, keras.Sequential):
            chain = [layer for layer in model.layers]
            for a, b in zip(chain[:-1], chain[1:]):
                self._link(a, b)
            self._outputs = {id(chain[-1])} if chain else set()
        else:
            for nodes in model._nodes_by_depth.values():
                for node in nodes:
                    for parent in node.parent_nodes:
                        self._link(parent.operation, node.operation)
            self._outputs = {id(t._keras_history.operation) for t in model.outputs}

    def _link(self, producer, consumer):
        if id(producer) in self._consumers and id(consumer) in self._producers:
            if consumer not in self._consumers[id(producer)]:
                self._consumers[id(producer)].append(consumer)
            if producer not in self._producers[id(consumer)]:
                self._producers[id(consumer)].append(producer)

    def producers(self, layer) -> list:
        return self._producers.get(id(layer), [])

    def consumers(self, layer) -> list:
        return self._consumers.get(id(layer), [])

    def is_output(self, layer) -> bool:
        return id(layer) in self._outputs


def _operations(model):
    if isinstance(model, keras.Sequential):
        return list(model.layers)
    return [op for op in model.operations if not isinstance(op, keras.layers.InputLayer)]
