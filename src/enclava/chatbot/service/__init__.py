"""Chatbots: configuration, prompt templates, conversations, and one conversational turn.

Split by concern; everything callers need is re-exported here (``service.run_turn`` etc.).
"""

from enclava.chatbot.service.chatbots import (
    create_chatbot,
    delete_chatbot,
    delete_conversation,
    effective_system_prompt,
    get_chatbot,
    get_conversation,
    list_chatbots,
    list_conversations,
    update_chatbot,
)
from enclava.chatbot.service.prompt_templates import (
    create_template,
    delete_template,
    ensure_builtin_templates,
    get_template,
    list_templates,
    render_template,
    update_template,
)
from enclava.chatbot.service.turns import (
    MessageReceived,
    StreamingTurn,
    TurnResult,
    emit_message_received,
    run_turn,
    split_openai_messages,
    stream_turn,
)

__all__ = [
    "MessageReceived",
    "StreamingTurn",
    "TurnResult",
    "create_chatbot",
    "create_template",
    "delete_chatbot",
    "delete_conversation",
    "delete_template",
    "effective_system_prompt",
    "emit_message_received",
    "ensure_builtin_templates",
    "get_chatbot",
    "get_conversation",
    "get_template",
    "list_chatbots",
    "list_conversations",
    "list_templates",
    "render_template",
    "run_turn",
    "split_openai_messages",
    "stream_turn",
    "update_chatbot",
    "update_template",
]
