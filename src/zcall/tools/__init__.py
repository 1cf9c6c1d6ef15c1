"""Programs over the library: the ``zcall`` command line, the mesh launcher and the demo."""
