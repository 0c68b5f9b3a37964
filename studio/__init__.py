"""The app's handlers as plain Python functions: no gradio import anywhere in this package.

app.py builds the UI and calls these; tests call them directly. Modules, one job each:

- session:   the loaded model, the expert catalog, adding experts (one per process)
- settings:  the user's composition settings (validated) and the paper's defaults
- inputs:    user files -> validated inputs, point-cloud previews
- variants:  which variants a request runs, per-request views of the shared model
- cards:     side-by-side answer cards (HTML)
- run:       compare (blocking and streamed), the /compare API payload, compose timing
- learn:     formulas with the current coefficients, the token-routing view
- config_io: YAML save / load of a composition
- bench:     MCUB-synth benchmark and the coefficient sweep
- exporting: materialized export zipped for download
- examples:  example rows from examples/manifest.json
- memory:    the malloc-arena cap that keeps a long-running server's memory flat
"""
