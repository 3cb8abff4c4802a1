"""Export: a standalone folder (merged or adapter), verified by a plain reload; its manifest and
README; a GGUF verified in llama.cpp; an Ollama Modelfile. The face: what other packages and users
reach for."""

from .folder import export_model
from .manifest import MANIFEST, ExportResult

__all__ = ["MANIFEST", "ExportResult", "export_model"]
