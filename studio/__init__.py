"""The app's handlers as plain Python functions: no gradio import anywhere in this package.

app.py builds the UI and calls these; tests call them directly. Each module has one job;
DESIGN.md ("Layout") lists them.
"""
