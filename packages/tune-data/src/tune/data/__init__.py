"""tune.data: tokenizers, chat templates, dataset builders, streaming on-the-fly packing and exact-resume iteration."""

from tune.data._version import __version__
from tune.data.assistant_spans import assistant_spans
from tune.data.builders import (
    ChatBuilder,
    InstructionBuilder,
    PromptAnswerBuilder,
    TextBuilder,
    build_sample_builder,
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
from tune.data.loader import StreamingLoader, make_loader, merge_loader_states, per_rank_batches
from tune.data.masking import (
    IGNORE_INDEX,
    check_assistant_masking,
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
from tune.data.padding_free import (
    padding_free_batch,
    padding_free_batches,
    remove_padding,
    resolve_padding_free,
)
from tune.data.preference import PreferenceBuilder, UnpairedBuilder
from tune.data.prompt_files import (
    PROMPT_FILE_SUFFIXES,
    EncodedPrompt,
    PromptInput,
    PromptInputError,
    collect_prompts,
    encode_prompt,
    parse_prompt,
    read_prompt_file,
)
from tune.data.sampler import RankCursor, SampleOrder, cursor_from_state, merge_rank_states
from tune.data.sources import (
    DataSourceError,
    load_source,
    read_jsonl,
    require_columns,
    row_location,
    split_source,
)
from tune.data.template_sandbox import TemplateLimitError
from tune.data.tokenizer import Tokenizer, TokenizerFileError, check_vocab_fits
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
    "PROMPT_FILE_SUFFIXES",
    "ROLES",
    "TRUNCATION_POLICIES",
    "ChatBuilder",
    "ChatTemplate",
    "DataSourceError",
    "DataStats",
    "EncodedPrompt",
    "InstructionBuilder",
    "Message",
    "MessageError",
    "PreferenceBuilder",
    "PromptAnswerBuilder",
    "PromptInput",
    "PromptInputError",
    "RankCursor",
    "RenderedChat",
    "SampleOrder",
    "SampleTooLongError",
    "StreamingLoader",
    "TemplateLimitError",
    "TextBuilder",
    "Tokenizer",
    "TokenizerFileError",
    "UnpairedBuilder",
    "__version__",
    "apply_truncation",
    "assistant_spans",
    "build_sample_builder",
    "bundled_template",
    "check_assistant_masking",
    "check_vocab_fits",
    "collate_packed",
    "collate_padded",
    "collate_preference",
    "collate_prompts",
    "collect_prompts",
    "concat_documents",
    "cursor_from_state",
    "encode_prompt",
    "load_source",
    "make_loader",
    "merge_loader_states",
    "merge_rank_states",
    "pack_stream",
    "pad_pack",
    "padding_free_batch",
    "padding_free_batches",
    "parse_prompt",
    "per_rank_batches",
    "read_jsonl",
    "read_prompt_file",
    "remove_padding",
    "require_columns",
    "resolve_padding_free",
    "resolve_template",
    "row_location",
    "select_for_pack",
    "sharegpt_to_messages",
    "shift_labels",
    "spans_to_token_mask",
    "split_source",
    "template_control_tokens",
    "template_end_of_turn",
    "to_messages",
    "tokenize_messages",
    "tokenize_text",
]
