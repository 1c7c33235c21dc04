"""tune.data: tokenizers, chat templates, dataset builders, streaming on-the-fly packing and exact-resume iteration."""

from tune.data._version import __version__
from tune.data.builders import (
    ChatBuilder,
    InstructionBuilder,
    PreferenceBuilder,
    PromptAnswerBuilder,
    TextBuilder,
    resolve_template,
    sharegpt_to_messages,
)
from tune.data.bundled_templates import (
    BUNDLED_TEMPLATES,
    bundled_template,
    template_control_tokens,
    template_end_of_turn,
)
from tune.data.chat_template import ChatTemplate, RenderedChat
from tune.data.collate import collate_packed, collate_padded, collate_preference, collate_prompts
from tune.data.loader import StreamingLoader, merge_loader_states
from tune.data.masking import (
    IGNORE_INDEX,
    shift_labels,
    spans_to_token_mask,
    tokenize_messages,
    tokenize_text,
)
from tune.data.messages import ROLES, Message, MessageError, to_messages
from tune.data.packing import (
    PACKING_STRATEGIES,
    concat_documents,
    pack_stream,
    pad_pack,
    select_for_pack,
)
from tune.data.padding_free import remove_padding
from tune.data.sampler import RankCursor, SampleOrder, cursor_from_state, merge_rank_states
from tune.data.sources import (
    DataSourceError,
    load_source,
    read_jsonl,
    require_columns,
    row_location,
)
from tune.data.template_sandbox import TemplateLimitError
from tune.data.tokenizer import Tokenizer, TokenizerFileError
from tune.data.truncation import (
    TRUNCATION_POLICIES,
    DataStats,
    SampleTooLongError,
    apply_truncation,
)

__all__ = [
    "BUNDLED_TEMPLATES",
    "IGNORE_INDEX",
    "PACKING_STRATEGIES",
    "ROLES",
    "TRUNCATION_POLICIES",
    "ChatBuilder",
    "ChatTemplate",
    "DataSourceError",
    "DataStats",
    "InstructionBuilder",
    "Message",
    "MessageError",
    "PreferenceBuilder",
    "PromptAnswerBuilder",
    "RankCursor",
    "RenderedChat",
    "SampleOrder",
    "SampleTooLongError",
    "StreamingLoader",
    "TemplateLimitError",
    "TextBuilder",
    "Tokenizer",
    "TokenizerFileError",
    "__version__",
    "apply_truncation",
    "bundled_template",
    "collate_packed",
    "collate_padded",
    "collate_preference",
    "collate_prompts",
    "concat_documents",
    "cursor_from_state",
    "load_source",
    "merge_loader_states",
    "merge_rank_states",
    "pack_stream",
    "pad_pack",
    "read_jsonl",
    "remove_padding",
    "require_columns",
    "resolve_template",
    "row_location",
    "select_for_pack",
    "sharegpt_to_messages",
    "shift_labels",
    "spans_to_token_mask",
    "template_control_tokens",
    "template_end_of_turn",
    "to_messages",
    "tokenize_messages",
    "tokenize_text",
]
