"""Media: uploads (init, PUT, complete), content-addressed storage, metadata and thumbnails.

Other domains call `vectorsvc.media.service`: `MediaService.resolve`, `load_image`,
`thumbnail_bytes`.
"""
