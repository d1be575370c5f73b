"""Foundation: typed configuration and presets, devices and seeds, atomic files, the run store,
label values, where a run is. Imports nothing else of the package."""
