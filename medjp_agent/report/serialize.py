"""JSON form of the report's frozen dataclasses: their fields and their public properties, recursively."""

from __future__ import annotations

import dataclasses
from typing import Any


def jsonable(obj: Any) -> Any:
    """``obj`` as JSON-ready data: a dataclass becomes a dict of its fields plus its properties (so derived figures
    such as an accuracy or a pass flag are in the JSON too), tuples become lists, mapping keys become strings."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        d = {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        for cls in type(obj).__mro__:
            d.update({name: jsonable(getattr(obj, name)) for name, attr in vars(cls).items()
                      if isinstance(attr, property) and not name.startswith("_") and name not in d})
        return d
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


class Serializable:
    """Gives a frozen dataclass ``to_dict()``: its :func:`jsonable` form."""

    def to_dict(self) -> dict[str, Any]:
        return jsonable(self)
