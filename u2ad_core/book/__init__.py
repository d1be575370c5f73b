"""The book's tooling: building the book (papermill + Jupyter Book), notebook set-up, sweeps on
Dask, results files, site checks, figure style, plotting helpers and widgets. Imports the
layers below it (never ``experiments``)."""
