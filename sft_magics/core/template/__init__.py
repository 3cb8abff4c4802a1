"""Chat templates: rendering (bounded, the only way a template runs), tokens and the loss mask,
template checks, the template as a training choice, token counts, the rows training is fed, and the
data doctor (your data through the template). The face: what other packages and users reach for
(``render``, the module of the bound, is reached as ``template.render``; the function that renders a
row is ``tokenize_row``, also ``sft_magics.render``)."""

from .chat_templates import ChatTemplateError, apply_training_template, resolve_template, template_for_viewing
from .checks import shown_rendering, template_checks
from .doctor import DataStats, data_stats
from .prepared import to_trl_rows
from .render import TemplateError, TemplateTimeout, apply_chat_template
from .tokens import Rendering, choose_mask_method, tokenize_row

__all__ = [
    "ChatTemplateError",
    "DataStats",
    "Rendering",
    "TemplateError",
    "TemplateTimeout",
    "apply_chat_template",
    "apply_training_template",
    "choose_mask_method",
    "data_stats",
    "resolve_template",
    "shown_rendering",
    "template_checks",
    "template_for_viewing",
    "to_trl_rows",
    "tokenize_row",
]
