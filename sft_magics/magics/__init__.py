"""The IPython magics: thin adapters from a line/cell to core, then to a display backend.

Split by concern, as IPython splits its own: ``template.py`` (``%sft_template``, ``%sft_data``),
``train.py`` (``%%sft_train``, ``%sft_runs``, ``%sft_attach``, ``%sft_wait``, ``%sft_stop``),
``evaluate.py`` (``%sft_eval``, ``%sft_chat``), ``export.py`` (``%sft_export``); shared helpers in
``_common.py``. Each is a mixin; :class:`SftMagics` joins them and holds the settings, so
``%config SftMagics.output_dir = ...`` works for all. User mistakes become a one-line
``UsageError`` in ``_common._user_errors``, and only there. Heavy libraries are imported inside
the magic bodies, never at import time.
"""

from __future__ import annotations

from IPython.core.magic import Magics, magics_class
from traitlets import Bool, Enum, Unicode

from ..display import MODES

# The mixins' @line_magic / @cell_magic decorators record their magics until the @magics_class
# below collects them: import them here, right before it.
from .evaluate import EvalMagics
from .export import ExportMagics
from .template import TemplateMagics
from .train import TrainMagics


@magics_class
class SftMagics(TemplateMagics, TrainMagics, EvalMagics, ExportMagics, Magics):
    """Magics for supervised fine-tuning. Settings persist between cells, e.g.
    ``%config SftMagics.output_dir = "runs"``."""

    output_dir = Unicode("runs", help="Folder where training runs are saved.").tag(config=True)
    default_model = Unicode("smollm2-135m", help="Model used when a magic is given none.").tag(config=True)
    display = Enum(list(MODES), default_value="auto", help="Display backend: auto, widget, rich or plain.").tag(
        config=True
    )
    trust_remote_code = Bool(False, help="Allow model repositories to run their own Python code.").tag(config=True)
