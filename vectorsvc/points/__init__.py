"""The stored point: its one home.

- `namespaces`: collection, alias and tenant key names, point ids, the scope rule and the
  payload field names;
- `collections`: a model release's collection and alias, created once, on first write;
- `catalog`: the per-namespace point count (the knowledge-base list reads it).
"""
