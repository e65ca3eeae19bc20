"""The stored point: its one home.

- `namespaces`: collection, alias and tenant key names, point ids, the scope rule and the
  payload field names;
- `collections`: a model release's collection and alias, created once, on first write;
- `payload`: a point's payload (and its content hash), built for a write and read back
  into search hits and item listings; the thumbnail URL of its media;
- `metadata`: the client metadata's key and number rules and the filter over it;
- `store`: what a namespace holds, and write-and-recount / delete-and-recount;
- `catalog`: the per-namespace point count that `store` keeps exact (the knowledge-base
  list reads it).
"""
