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
)
from tune.data.bundled_templates import (
    BUNDLED_TEMPLATES,
    bundled_template,
    template_control_tokens,
    template_end_of_turn,
)
from tune.data.chat_shapes import (
    CHAT_SHAPES,
    SHAREGPT_ROLES,
    chat_shape,
    openai_messages,
    sharegpt_to_messages,
)
from tune.data.chat_template import ChatTemplate, RenderedChat
from tune.data.collate import collate_packed, collate_padded, collate_preference, collate_prompts
from tune.data.column_maps import BUILDER_COLUMNS, column_map_problem
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
from tune.data.mixture import (
    DatasetMixture,
    MixtureBuilder,
    MixtureSource,
    MixtureSplit,
    mixture_counts,
    mixture_order,
    split_mixture,
)
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
    dataset_origin,
    load_source,
    read_jsonl,
    require_columns,
    row_location,
    split_source,
)
from tune.data.template_sandbox import TemplateLimitError
from tune.data.tokenizer import Tokenizer, TokenizerFileError, check_vocab_fits
from tune.data.transformers_inputs import (
    TRANSFORMERS_ATTENTION_FORMS,
    block_causal_mask,
    document_positions,
    packed_seq_lens,
    transformers_inputs,
    transformers_labels,
)
from tune.data.truncation import (
    TRUNCATION_POLICIES,
    DataStats,
    SampleTooLongError,
    apply_truncation,
)

__all__ = [
    "BUILDER_COLUMNS",
    "BUNDLED_TEMPLATES",
    "CHAT_SHAPES",
    "IGNORE_INDEX",
    "PACKING_STRATEGIES",
    "PROMPT_FILE_SUFFIXES",
    "ROLES",
    "SHAREGPT_ROLES",
    "TRANSFORMERS_ATTENTION_FORMS",
    "TRUNCATION_POLICIES",
    "ChatBuilder",
    "ChatTemplate",
    "DataSourceError",
    "DataStats",
    "DatasetMixture",
    "EncodedPrompt",
    "InstructionBuilder",
    "Message",
    "MessageError",
    "MixtureBuilder",
    "MixtureSource",
    "MixtureSplit",
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
    "block_causal_mask",
    "build_sample_builder",
    "bundled_template",
    "chat_shape",
    "check_assistant_masking",
    "check_vocab_fits",
    "collate_packed",
    "collate_padded",
    "collate_preference",
    "collate_prompts",
    "collect_prompts",
    "column_map_problem",
    "concat_documents",
    "cursor_from_state",
    "dataset_origin",
    "document_positions",
    "encode_prompt",
    "load_source",
    "make_loader",
    "merge_loader_states",
    "merge_rank_states",
    "mixture_counts",
    "mixture_order",
    "openai_messages",
    "pack_stream",
    "packed_seq_lens",
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
    "split_mixture",
    "split_source",
    "template_control_tokens",
    "template_end_of_turn",
    "to_messages",
    "tokenize_messages",
    "tokenize_text",
    "transformers_inputs",
    "transformers_labels",
]
