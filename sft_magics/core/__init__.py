"""The core: plain Python, no IPython, ipywidgets or rich. Base modules (errors, events, files,
secrets, models, progress) and one package per concern: data/, template/, run/, train/, evaluate/,
export/ (ARCHITECTURE.md). Nothing is imported here, so importing a package stays cheap."""
