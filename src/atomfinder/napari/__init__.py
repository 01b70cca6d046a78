"""The napari plugin of atomfinder (npe2; ``pip install atomfinder[napari]``).

A thin layer over the public API, like :mod:`atomfinder.cli`:

* :mod:`._reader` opens every file :func:`atomfinder.detection.io.read_micrograph`
  reads as an image layer whose scale is the pixel size in Å;
* :mod:`._widget` is the dock widget that runs :func:`atomfinder.detect` (or the
  time-series tracker) in a worker thread;
* :mod:`._points` turns an atom table into one Points layer per class and back;
* :mod:`._series` runs :func:`atomfinder.analysis.timeseries.track` on a stack;
* :mod:`._writer` saves (edited) Points layers as an atomfinder atom-table CSV.

Importing this package imports neither napari nor torch; the manifest
``napari.yaml`` names the modules napari imports when a contribution is used.
"""
